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
    AudioError,
    AudioTooLargeError,
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
    import soxr  # what librosa.resample(res_type="soxr_hq") calls, without librosa's import cost

    return soxr.resample(np.asarray(samples, np.float32), orig_sr, target_sr, quality="HQ").astype(np.float32)


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


def speech_end_s(samples: np.ndarray, sample_rate: int, rel_db: float = -30.0, floor_db: float = 10.0) -> float:
    """Seconds from the start of a one-word clip to the end of its speech: the end of its last
    10 ms frame within ``rel_db`` of the loudest frame and at least ``floor_db`` over the clip's
    own noise floor (its 10th-percentile frame). A clip's trailing silence is not the word, nor,
    in a noisy clip, its noise: an end found too late would make a detection look early. What a
    listener calls the word's end, from which a live detection's latency counts."""
    hop = max(1, sample_rate // 100)
    n = len(samples) // hop * hop
    if n == 0:
        return len(samples) / sample_rate
    frames = np.asarray(samples[:n], np.float64).reshape(-1, hop)
    energy = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    level = max(energy.max() + rel_db, np.percentile(energy, 10) + floor_db)
    loud = np.nonzero(energy >= min(level, energy.max()))[0]
    return float((loud[-1] + 1) * hop / sample_rate)


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


#: libsndfile's frame count of a file whose length its header does not state (a FLAC written to a pipe).
UNKNOWN_FRAMES = 2**63 - 1
_BLOCK_FRAMES = 1 << 16  # frames read at a time from a file of unknown length


@dataclass(frozen=True)
class Budget:
    """What one in-memory decode may expand to: at most ``max_duration_s`` of audio and (unless
    None) at most ``max_samples`` decoded samples, all channels together. A few KB of compressed
    silence can claim minutes of 8-channel 384 kHz audio: that is refused from the header, before
    any sample is decoded (memory), and never resampled (CPU)."""

    max_duration_s: float = 60.0
    max_samples: int | None = None

    def frames(self, sample_rate: int, channels: int) -> int:
        """The most frames a decode at ``sample_rate`` with ``channels`` may hold."""
        by_duration = math.floor(self.max_duration_s * sample_rate)
        if self.max_samples is None:
            return by_duration
        return min(by_duration, self.max_samples // max(1, channels))

    def check(self, frames: int, sample_rate: int, channels: int, known: bool = True) -> None:
        """Raise :class:`AudioTooLongError` or :class:`AudioTooLargeError` when ``frames`` (``known``:
        the file's length; else as many as were decoded before stopping) is past the budget."""
        if frames > self.max_duration_s * sample_rate:
            raise AudioTooLongError(f"audio is {frames / sample_rate:.1f} s long; the maximum is "
                                    f"{self.max_duration_s:g} s")
        if self.max_samples is not None and frames * channels > self.max_samples:
            layout = f"{channels} channel{'s' if channels != 1 else ''}"
            if known:
                what = (f"{frames * channels:,} samples ({layout} x {frames:,} frames at {sample_rate:,} Hz), more "
                        f"than the {self.max_samples:,} accepted")
            else:
                what = f"more than the {self.max_samples:,} samples accepted ({layout} at {sample_rate:,} Hz)"
            raise AudioTooLargeError(f"the audio decodes to {what}; send fewer channels or a lower sample rate "
                                     "(the model listens to 16 kHz mono)")


def _read_all(f: sf.SoundFile, dtype: str, budget: Budget) -> np.ndarray:
    """Every frame of ``f`` as ``(frames, channels)``, never more than ``budget`` allows."""
    if f.frames != UNKNOWN_FRAMES:
        budget.check(f.frames, f.samplerate, f.channels)  # from the header, before decoding anything
        return f.read(dtype=dtype, always_2d=True)
    limit = budget.frames(f.samplerate, f.channels)
    blocks, got = [], 0
    while got <= limit:  # one frame past the limit tells "too long" without decoding the rest
        block = f.read(min(_BLOCK_FRAMES, limit + 1 - got), dtype=dtype, always_2d=True)
        if not len(block):
            break
        blocks.append(block)
        got += len(block)
    if got > limit:
        if got > budget.max_duration_s * f.samplerate:
            raise AudioTooLongError(f"audio is longer than the maximum of {budget.max_duration_s:g} s")
        budget.check(got, f.samplerate, f.channels, known=False)
    return np.concatenate(blocks) if blocks else np.zeros((0, f.channels), dtype)


def _decode_soundfile(data: bytes, budget: Budget) -> tuple[np.ndarray, int, int] | None:
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            # float64 only where the file holds it: a DOUBLE sample can be far beyond float32's range
            out = _read_all(f, "float64" if f.subtype == "DOUBLE" else "float32", budget)
            return out, f.samplerate, f.channels
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None


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

    def decode(self, data: bytes, sample_rate: int = 16000, max_duration_s: float = 60.0,
               max_samples: int | None = None) -> Audio:
        """Decode ``data`` (bytes of any common audio format) to mono float32 at ``sample_rate``.
        ``max_samples`` (None: no bound) bounds what libsndfile may decode in memory, all channels
        together (:class:`Budget`); ffmpeg's output is mono at ``sample_rate`` already.

        Raises :class:`EmptyAudioError`, :class:`UnsupportedAudioError`, :class:`AudioTooLongError`,
        :class:`AudioTooLargeError`, :class:`InvalidAudioError`, :class:`~kws.errors.DecoderBusyError` or
        :class:`~kws.errors.StorageUnavailableError`.
        """
        if not data:
            raise EmptyAudioError("the upload is empty (0 bytes)")
        got = _decode_soundfile(data, Budget(max_duration_s, max_samples))
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
            if len(samples) > max_duration_s * sample_rate:
                raise AudioTooLongError(f"audio is longer than the maximum of {max_duration_s:g} s")
        if samples.size == 0:
            raise EmptyAudioError("the upload decodes to no audio samples")
        return Audio(samples=samples, sample_rate=sample_rate, source_sample_rate=src_sr, source_channels=channels)


_default = Decoder()


def decode(data: bytes, sample_rate: int = 16000, max_duration_s: float = 60.0,
           max_samples: int | None = None) -> Audio:
    """:meth:`Decoder.decode` with the default limits (one process-wide bound on ffmpeg decodes)."""
    return _default.decode(data, sample_rate, max_duration_s, max_samples)


def check_not_silent(samples: np.ndarray) -> None:
    if float(np.max(np.abs(samples), initial=0.0)) < SILENCE_PEAK:
        raise SilentAudioError("the audio is silent (peak below -80 dBFS); nothing to recognise")
