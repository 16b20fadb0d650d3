"""The clips of ``make_fullsize_archive.py`` rendered in its worker processes: a real clip of the
same word, pitch-shifted (librosa), sped up or slowed down (soxr), placed, with gain, a cut of a
background recording and a noise floor, seeded per clip; written as WAV tar members and gzipped
a chunk at a time."""

from __future__ import annotations

import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np

SR = 16_000
N = SR  # 1 s clips
LEVEL = 6  # gzip -6, GNU tar's default
MTIME = 1_500_000_000  # fixed member times: same seed, same bytes


def pitch_shift(x: np.ndarray, semitones: float) -> np.ndarray:
    """Shift the pitch by ``semitones`` at the same duration (librosa: a phase-vocoder stretch,
    then a resample back)."""
    import librosa

    if abs(semitones) < 0.01:
        return x
    y = librosa.effects.pitch_shift(x, sr=SR, n_steps=semitones, n_fft=512, hop_length=128, res_type="soxr_mq")
    return fit(y.astype(np.float32), len(x), 0.5)


def fit(x: np.ndarray, n: int, where: float) -> np.ndarray:
    """Crop (keeping the loudest part; ``where`` in [0, 1] places the rest) or zero-pad to ``n``."""
    if len(x) == n:
        return x
    if len(x) > n:
        c = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
        energy = c[n // 4:] - c[:-(n // 4)]  # energy of every window of n/4 samples
        centre = int(np.argmax(energy)) + n // 8
        start = int(np.clip(centre - n // 2, 0, len(x) - n))
        return x[start:start + n]
    out = np.zeros(n, np.float32)
    start = int(where * (n - len(x)))
    out[start:start + len(x)] = x
    return out


def wav_bytes(samples: np.ndarray) -> bytes:
    """16 kHz mono 16-bit PCM WAV (the 44-byte canonical header, as in the real archive)."""
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2").tobytes()
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1, SR, SR * 2, 2, 16,
                         b"data", len(pcm))
    return header + pcm


def read_wav(path: Path) -> np.ndarray:
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="float32", always_2d=False)
    if x.ndim > 1:
        x = x.mean(axis=1)
    if sr != SR:
        import soxr

        x = soxr.resample(x, sr, SR)
    return x.astype(np.float32)


# --------------------------------------------------------------------------- workers
_SOURCES: dict[str, np.ndarray] = {}
_NOISE: list[np.ndarray] = []


def init_worker(noise_files: list[str]) -> None:
    global _NOISE
    _NOISE = [read_wav(Path(p)) for p in noise_files]


def _source(path: str) -> np.ndarray:
    x = _SOURCES.get(path)
    if x is None:
        x = _SOURCES[path] = read_wav(Path(path))
    return x


def render(spec: dict) -> np.ndarray:
    """One clip from its spec (source, pitch, speed, gain, noise), seeded by ``spec['seed']``."""
    rng = np.random.default_rng(spec["seed"])
    x = _source(spec["source"])
    if spec["kind"] == "silence":  # a real silence clip: gain, and a cut of background noise
        y = x * 10 ** (spec["gain_db"] / 20)
    else:
        y = pitch_shift(x, spec["pitch"])
        if abs(spec["speed"] - 1.0) > 1e-3:
            import soxr

            y = soxr.resample(y, SR, SR / spec["speed"], quality="MQ")
        y = fit(y, N, float(rng.uniform(0.2, 0.8))) * 10 ** (spec["gain_db"] / 20)
        # time shift of the word in the window, as recordings vary
        y = np.roll(y, int(rng.integers(-1600, 1601)))
    noise = _NOISE[spec["noise"]]
    start = int(rng.integers(0, len(noise) - N))
    cut = noise[start:start + N]
    rms = float(np.sqrt(np.mean(cut ** 2))) or 1.0
    y = y + cut * (spec["noise_rms"] / rms) + rng.standard_normal(N).astype(np.float32) * spec["floor_rms"]
    peak = float(np.max(np.abs(y)))
    if peak > 0.99:
        y = y * (0.99 / peak)
    return y


def tar_member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), MTIME, 0o644
    info.uname = info.gname = ""
    head = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    pad = (-len(data)) % 512
    return head + data + b"\0" * pad


def tar_dir(name: str) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.mtime, info.mode = tarfile.DIRTYPE, MTIME, 0o755
    info.uname = info.gname = ""
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def gzip_member(data: bytes) -> bytes:
    c = zlib.compressobj(LEVEL, zlib.DEFLATED, 31)  # 31: a gzip member
    return c.compress(data) + c.flush()


def build_chunk(specs: list[dict]) -> tuple[bytes, int, int]:
    """Render a chunk of clips into tar members, gzip them: (gzip member, tar bytes, clips)."""
    tar = b"".join(tar_member(s["name"], wav_bytes(render(s))) for s in specs)
    return gzip_member(tar), len(tar), len(specs)
