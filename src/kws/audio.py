"""Audio decoding: any common format, rate, channel count and bit depth -> 16 kHz mono float32.

libsndfile (through :mod:`soundfile`) reads WAV, FLAC and Ogg from memory. Anything
else (MP3, WebM/Opus, M4A/AAC, ...) goes through ``ffmpeg``, which reads the upload
from a private temporary directory (``tempfile.TemporaryDirectory``: random name,
mode 0700, always removed) because containers such as MP4 need a seekable input.
Nothing is ever written to the working directory.
"""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from kws.errors import (
    AudioTooLongError,
    EmptyAudioError,
    InvalidAudioError,
    SilentAudioError,
    UnsupportedAudioError,
)

log = logging.getLogger(__name__)

#: Peak amplitude below which a signal counts as digital silence (about -80 dBFS).
SILENCE_PEAK = 1e-4


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32, mono, at ``sample_rate``
    sample_rate: int
    source_sample_rate: int | None  # as the upload was; None if the decoder could not tell
    source_channels: int | None

    @property
    def duration_s(self) -> float:
        return len(self.samples) / float(self.sample_rate)


def to_mono(data: np.ndarray) -> np.ndarray:
    """(frames, channels) or (frames,) -> (frames,) by averaging channels."""
    return data.mean(axis=1) if data.ndim == 2 else data


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    if orig_sr == target_sr:
        return samples.astype(np.float32, copy=False)
    import librosa

    return librosa.resample(samples, orig_sr=orig_sr, target_sr=target_sr, res_type="soxr_hq").astype(np.float32)


def change_speed(samples: np.ndarray, factor: float) -> np.ndarray:
    """Play ``samples`` ``factor`` times faster (tempo and pitch together, like a tape):
    the signal is resampled to ``len / factor`` samples."""
    if factor == 1.0:
        return samples
    import soxr

    return soxr.resample(samples, factor * 1000.0, 1000.0, quality="HQ").astype(np.float32)


def fix_length(samples: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad at the end or crop to exactly ``n`` samples (as the TF speech_commands reference does)."""
    if len(samples) >= n:
        return samples[:n]
    return np.pad(samples, (0, n - len(samples)))


def time_shift(samples: np.ndarray, shift: int) -> np.ndarray:
    """Move the signal ``shift`` samples later (negative: earlier), zero-filling the gap; same length."""
    if shift == 0:
        return samples
    out = np.zeros_like(samples)
    if shift > 0:
        out[shift:] = samples[:-shift]
    else:
        out[:shift] = samples[-shift:]
    return out


def snr_gain(signal_power: float, noise_power: float, snr_db: float) -> float:
    """The factor for noise of mean power ``noise_power`` so that signal-to-noise is ``snr_db``
    (0 when either power is 0: nothing to mix)."""
    if not (signal_power > 0 and noise_power > 0):
        return 0.0
    return math.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))


def load_file(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read a clip from disk (any libsndfile format) as mono float32 at ``sample_rate``."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return resample(to_mono(data), sr, sample_rate)


def _decode_soundfile(data: bytes, max_frames_at: callable) -> tuple[np.ndarray, int, int] | None:
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if f.frames > max_frames_at(f.samplerate):
                raise AudioTooLongError(_too_long_message(f.frames / f.samplerate, max_frames_at))
            out = f.read(dtype="float32", always_2d=True)
            return out, f.samplerate, f.channels
    except AudioTooLongError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None


def _too_long_message(duration: float, max_frames_at) -> str:
    limit = max_frames_at(1)
    return f"audio is {duration:.1f} s long; the maximum is {limit:g} s"


def _probe_stream(ffprobe: str | None, src: Path) -> tuple[int | None, int | None]:
    """Sample rate and channel count of the first audio stream, as ffprobe reports them (None if unknown)."""
    if ffprobe is None:
        return None, None
    cmd = [
        ffprobe, "-v", "error", "-select_streams", "a:0",
        "-show_entries", "stream=sample_rate,channels", "-of", "json", str(src),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=20, check=False)
        stream = json.loads(proc.stdout or b"{}").get("streams", [{}])[0]
        return int(stream["sample_rate"]), int(stream["channels"])
    except (subprocess.TimeoutExpired, ValueError, KeyError, IndexError, TypeError):
        return None, None


def _decode_ffmpeg(data: bytes, sample_rate: int, max_duration_s: float) -> tuple[np.ndarray, int | None, int | None]:
    """Decode through ffmpeg; returns the 16 kHz mono samples and the source's own rate and channels."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise UnsupportedAudioError(
            "this audio is not WAV/FLAC/Ogg and ffmpeg is not installed to decode other formats"
        )
    with tempfile.TemporaryDirectory(prefix="kws-decode-") as tmp:
        src = Path(tmp) / "upload"
        src.write_bytes(data)
        cmd = [
            ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error",
            "-i", str(src), "-vn", "-ac", "1", "-ar", str(sample_rate),
            # Decode a little more than the limit so "too long" is detectable without decoding hours.
            "-t", f"{max_duration_s + 0.5:.3f}", "-f", "f32le", "pipe:1",
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            raise UnsupportedAudioError("decoding this audio took too long; send WAV, FLAC, Ogg, MP3, WebM or M4A") from None
        src_sr, channels = _probe_stream(shutil.which("ffprobe"), src) if proc.returncode == 0 else (None, None)
    if proc.returncode != 0 or not proc.stdout:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        log.info("ffmpeg could not decode upload: %s", detail[-1] if detail else proc.returncode)
        raise UnsupportedAudioError(
            "the upload is not audio in a format we can decode (WAV, FLAC, Ogg, MP3, WebM, M4A, ...)"
        )
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32), src_sr, channels


def decode(data: bytes, sample_rate: int = 16000, max_duration_s: float = 60.0) -> Audio:
    """Decode ``data`` (bytes of any common audio format) to mono float32 at ``sample_rate``.

    Raises :class:`EmptyAudioError`, :class:`UnsupportedAudioError`,
    :class:`AudioTooLongError` or :class:`InvalidAudioError`.
    """
    if not data:
        raise EmptyAudioError("the upload is empty (0 bytes)")

    def max_frames_at(sr: int) -> float:
        return max_duration_s * sr

    got = _decode_soundfile(data, max_frames_at)
    if got is not None:
        frames, src_sr, channels = got
        samples = resample(to_mono(frames), src_sr, sample_rate)
    else:
        samples, src_sr, channels = _decode_ffmpeg(data, sample_rate, max_duration_s)
        if len(samples) > max_frames_at(sample_rate):
            raise AudioTooLongError(f"audio is longer than the maximum of {max_duration_s:g} s")
    if samples.size == 0:
        raise EmptyAudioError("the upload decodes to no audio samples")
    if not np.all(np.isfinite(samples)):
        raise InvalidAudioError("the audio contains NaN or infinite sample values")
    return Audio(samples=samples, sample_rate=sample_rate, source_sample_rate=src_sr, source_channels=channels)


def check_not_silent(samples: np.ndarray) -> None:
    if float(np.max(np.abs(samples), initial=0.0)) < SILENCE_PEAK:
        raise SilentAudioError("the audio is silent (peak below -80 dBFS); nothing to recognise")
