"""The audio both generated sources share (:mod:`kws.synthetic`, :mod:`kws.negatives`): seeded
draws, a TTS engine's take cleaned the same way whatever the engine, the background noise folder
and 16 kHz 16-bit files.

Every draw comes from :func:`seeded_rng` (a generator seeded by the seed and the names of what is
drawn, never global state), so that the sources give byte-identical files whatever the number of
worker processes.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from kws.audio import load_file, resample

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CLIP_SAMPLES = SAMPLE_RATE  # exactly 1 s, like every Speech Commands clip
NOISE_SECONDS = 60
PEAK_LIMIT = 0.98
_TRIM_TOP_DB = 40.0
_FADE = 80  # samples (5 ms) of fade at the ends of a take


# --- takes ---------------------------------------------------------------------------------
def seeded_rng(seed: int, *parts: object) -> np.random.Generator:
    """A generator seeded by ``seed`` and ``parts`` only (stable, independent of call order)."""
    digest = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype="<u4").tolist())


def fade(x: np.ndarray) -> np.ndarray:
    """``x`` faded in and out over its first and last :data:`_FADE` samples (a copy)."""
    n = min(_FADE, len(x) // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x = x.copy()
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def clean_take(raw: np.ndarray, rate: int) -> np.ndarray | None:
    """A TTS engine's take at 16 kHz, its silence trimmed and its ends faded; None when it is
    (nearly) silent. Shared by every engine, so all their takes are cut the same way."""
    import librosa

    y = resample(raw, rate, SAMPLE_RATE)
    if y.size and float(np.max(np.abs(y))) > 1e-3:
        y, _ = librosa.effects.trim(y, top_db=_TRIM_TOP_DB, frame_length=512, hop_length=128)
        if y.size >= 160:  # at least 10 ms of sound
            return fade(y.astype(np.float32))
    return None


def warm_up() -> None:
    """Import librosa and compile its kernels once, so that forked workers inherit them."""
    import librosa

    y = resample(np.sin(np.arange(2205, dtype=np.float32) * 0.1), 22050, SAMPLE_RATE)
    librosa.effects.trim(y, top_db=_TRIM_TOP_DB, frame_length=512, hop_length=128)


def write_pcm16(path: Path, samples: np.ndarray) -> None:
    sf.write(str(path), samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")



# --- background noise ----------------------------------------------------------------------
def _pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    return np.fft.irfft(spectrum / np.sqrt(freqs), n)


def prepare_noise(noise_dir: str | Path | None, dest_noise: Path, seed: int) -> tuple[list[Path], str]:
    """Fill ``dest_noise`` with the recordings of ``noise_dir`` (converted to 16 kHz mono 16-bit
    when needed) or, when there are none, with generated white and pink noise."""
    dest_noise.mkdir(parents=True, exist_ok=True)
    sources = []
    if noise_dir is not None and str(noise_dir).strip():
        src_dir = Path(noise_dir).expanduser()  # relative paths resolve against the cwd
        if src_dir.is_dir():
            sources = sorted(p for p in src_dir.iterdir() if p.suffix.lower() == ".wav" and p.is_file())
    written = []
    for src in sources:
        out = dest_noise / src.name
        try:
            info = sf.info(str(src))
            if info.samplerate == SAMPLE_RATE and info.channels == 1 and info.subtype == "PCM_16":
                shutil.copyfile(src, out)
            else:
                samples = load_file(src, SAMPLE_RATE)
                peak = float(np.max(np.abs(samples), initial=0.0))
                if peak > 1.0:
                    samples = samples / peak
                write_pcm16(out, np.round(samples * 32767.0).astype(np.int16))
        except (sf.LibsndfileError, RuntimeError, ValueError) as err:
            log.warning("skipping background noise file %s: %s", src, err)
            out.unlink(missing_ok=True)
            continue
        written.append(out)
    if written:
        return written, f"copied from {noise_dir}"

    log.warning(
        "no background noise recordings in %s: generating white and pink noise instead "
        "(point noise_dir at Speech Commands' _background_noise_ for realistic noise)",
        noise_dir,
    )
    rng = seeded_rng(seed, "background_noise")
    n = NOISE_SECONDS * SAMPLE_RATE
    for name, signal in (("white_noise.wav", rng.standard_normal(n)), ("pink_noise.wav", _pink_noise(rng, n))):
        signal = signal * (0.1 / float(np.sqrt(np.mean(signal**2))))
        signal = np.clip(signal, -PEAK_LIMIT, PEAK_LIMIT)
        out = dest_noise / name
        write_pcm16(out, np.round(signal * 32767.0).astype(np.int16))
        written.append(out)
    return written, "generated (white and pink noise)"
