"""Audio decoding: any common format, rate, channel count and bit depth -> 16 kHz mono float32.

libsndfile (through :mod:`soundfile`) reads WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF, AU and CAF
from memory. Anything else goes to ``ffmpeg`` only if its first bytes are a known audio
container (WebM/Matroska, MP4/M4A/3GP, AMR, AAC ADTS, WMA, ...: :mod:`kws.sniff`), under a
CPU, wall-time and concurrency budget, reading the upload from an in-memory file
(:mod:`kws.ffmpeg`). Nothing is ever written to a disk.
"""

from __future__ import annotations

import io
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from kws import ffmpeg, sniff
from kws.errors import (
    AudioTooLongError,
    EmptyAudioError,
    InvalidAudioError,
    SilentAudioError,
    UnsupportedAudioError,
)

log = logging.getLogger(__name__)

#: What an error message lists as accepted.
FORMATS = "WAV, FLAC, Ogg, MP3, WebM, M4A/MP4, AMR, AAC, AIFF, ..."
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
            # float64 only where the file holds it: a DOUBLE sample can be far beyond float32's range
            out = f.read(dtype="float64" if f.subtype == "DOUBLE" else "float32", always_2d=True)
            return out, f.samplerate, f.channels
    except AudioTooLongError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None


def _too_long_message(duration: float, max_frames_at) -> str:
    limit = max_frames_at(1)
    return f"audio is {duration:.1f} s long; the maximum is {limit:g} s"


def usable(frames: np.ndarray) -> np.ndarray:
    """Decoded ``(frames, channels)`` or ``(frames,)`` of any float dtype -> mono float32 within -1..1.

    NaN or infinite samples are refused (:class:`InvalidAudioError`). Float formats can hold
    any finite magnitude, far outside the nominal -1..1: such a signal is scaled down to a peak
    of 1 BEFORE anything adds or squares it (channel mean, spectrum), where it would overflow.
    """
    if not np.all(np.isfinite(frames)):
        raise InvalidAudioError("the audio contains NaN or infinite sample values")
    peak = float(np.max(np.abs(frames), initial=0.0))
    if peak > 1.0:
        frames = frames / np.asarray(peak, frames.dtype)
    return to_mono(frames).astype(np.float32)


class Decoder:
    """Uploads -> :class:`Audio`. libsndfile (WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF, ...) decodes in
    memory, in the request's thread, and never waits; anything else goes to ffmpeg only when its
    first bytes are a known audio container (:func:`kws.sniff.container`), under ``limits``
    (:mod:`kws.ffmpeg`: CPU and wall budget per run, a bound on concurrent decodes)."""

    def __init__(self, limits: ffmpeg.Limits | None = None):
        self.limits = limits or ffmpeg.Limits()
        self.gate = ffmpeg.Gate(self.limits)

    def decode(self, data: bytes, sample_rate: int = 16000, max_duration_s: float = 60.0) -> Audio:
        """Decode ``data`` (bytes of any common audio format) to mono float32 at ``sample_rate``.

        Raises :class:`EmptyAudioError`, :class:`UnsupportedAudioError`, :class:`AudioTooLongError`,
        :class:`InvalidAudioError`, :class:`~kws.errors.DecoderBusyError` or
        :class:`~kws.errors.StorageUnavailableError`.
        """
        if not data:
            raise EmptyAudioError("the upload is empty (0 bytes)")

        def max_frames_at(sr: int) -> float:
            return max_duration_s * sr

        got = _decode_soundfile(data, max_frames_at)
        if got is not None:
            frames, src_sr, channels = got
            samples = resample(usable(frames), src_sr, sample_rate)
        else:
            fmt = sniff.container(data)
            if fmt is None:
                raise UnsupportedAudioError(f"the upload is not audio in a format we can decode ({FORMATS})")
            if shutil.which("ffmpeg") is None:
                raise UnsupportedAudioError(f"this {fmt} audio needs ffmpeg, which is not installed here")
            with self.gate.slot():
                decoded, src_sr, channels = ffmpeg.decode(data, fmt, sample_rate, max_duration_s, self.limits)
            samples = usable(decoded)
            if len(samples) > max_frames_at(sample_rate):
                raise AudioTooLongError(f"audio is longer than the maximum of {max_duration_s:g} s")
        if samples.size == 0:
            raise EmptyAudioError("the upload decodes to no audio samples")
        return Audio(samples=samples, sample_rate=sample_rate, source_sample_rate=src_sr, source_channels=channels)


_default = Decoder()


def decode(data: bytes, sample_rate: int = 16000, max_duration_s: float = 60.0) -> Audio:
    """:meth:`Decoder.decode` with the default limits (one process-wide bound on ffmpeg decodes)."""
    return _default.decode(data, sample_rate, max_duration_s)


def check_not_silent(samples: np.ndarray) -> None:
    if float(np.max(np.abs(samples), initial=0.0)) < SILENCE_PEAK:
        raise SilentAudioError("the audio is silent (peak below -80 dBFS); nothing to recognise")
