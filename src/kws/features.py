"""Audio features: the ONE implementation used by training (prepare stage) and serving.

``kind: mfcc`` gives ``n_mfcc`` cepstral coefficients per 20 ms frame, ``kind: logmel`` the
``n_mels`` log-mel energies they are computed from (the front end most small-footprint KWS
networks use). Both share the same STFT and mel filterbank code below.

``features.json`` in every model bundle is :meth:`FeatureConfig.to_dict`, so the
service recomputes exactly the features the model was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any, Mapping

import numpy as np

from kws.errors import ConfigError

KINDS = ("mfcc", "logmel")


@dataclass(frozen=True)
class FeatureConfig:
    kind: str = "mfcc"  # mfcc | logmel
    sample_rate: int = 16000
    clip_duration_s: float = 1.0
    n_mfcc: int = 13
    n_mels: int = 40
    n_fft: int = 640  # 40 ms
    win_length: int = 640
    hop_length: int = 320  # 20 ms
    fmin: float = 20.0
    fmax: float = 7600.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown feature parameters {sorted(unknown)}; known: {sorted(names)}")
        cfg = cls(**dict(d))
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown feature kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.win_length > self.n_fft:
            raise ConfigError(f"win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})")
        if self.clip_samples < self.n_fft:
            raise ConfigError("clip_duration_s is shorter than one FFT window")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ConfigError(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, fmax={self.fmax}")
        if self.n_mfcc > self.n_mels:
            raise ConfigError(f"n_mfcc ({self.n_mfcc}) must not exceed n_mels ({self.n_mels})")

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_duration_s))

    @property
    def n_frames(self) -> int:
        return 1 + (self.clip_samples - self.n_fft) // self.hop_length

    @property
    def n_coeffs(self) -> int:
        """Values per frame: ``n_mfcc`` for MFCCs, ``n_mels`` for log-mel energies."""
        return self.n_mfcc if self.kind == "mfcc" else self.n_mels

    @property
    def shape(self) -> tuple[int, int]:
        """Feature matrix shape for one clip: (frames, n_coeffs)."""
        return (self.n_frames, self.n_coeffs)


@lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).astype(np.float32)


@lru_cache(maxsize=8)
def _window(n_fft: int, win_length: int) -> np.ndarray:
    import librosa

    window = librosa.filters.get_window("hann", win_length, fftbins=True)
    return librosa.util.pad_center(window, size=n_fft).astype(np.float32)  # as librosa.stft pads it


def _stft(waves: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """``librosa.stft(..., window="hann", center=False)`` of ``(..., samples)`` -> ``(..., 1 + n_fft // 2,
    frames)``: the same frames and window, one real FFT over a strided view. librosa's own
    checks, block loop and copies cost more than the transform on a one-second clip, and every
    answer of the service pays for them (tests/test_features.py compares the two)."""
    import scipy.fft

    frames = np.lib.stride_tricks.sliding_window_view(waves, cfg.n_fft, axis=-1)[..., ::cfg.hop_length, :]
    return np.swapaxes(scipy.fft.rfft(frames * _window(cfg.n_fft, cfg.win_length), axis=-1), -1, -2)


def log_mel(waves: np.ndarray, cfg: FeatureConfig, any_length: bool = False) -> np.ndarray:
    """Log-mel energies (dB) of one clip ``(samples,)`` or a batch ``(n, samples)`` -> ``(..., n_mels, frames)``.

    Each clip must already be ``cfg.clip_samples`` long (see :func:`kws.audio.fix_length`), unless
    ``any_length``: then any length of at least one FFT window. Every frame depends on its own
    window only (no centring, a fixed log floor, not a per-array ``top_db``), so results depend
    neither on batching nor on the audio around a frame.
    """
    import librosa

    waves = np.asarray(waves, dtype=np.float32)
    if not any_length and waves.shape[-1] != cfg.clip_samples:
        raise ValueError(f"expected clips of {cfg.clip_samples} samples, got {waves.shape[-1]}")
    if waves.shape[-1] < cfg.n_fft:
        raise ValueError(f"audio of {waves.shape[-1]} samples is shorter than one FFT window ({cfg.n_fft})")
    spec = _stft(waves, cfg)
    power = spec.real**2 + spec.imag**2
    mel = _mel_basis(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax) @ power  # BLAS, batched
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)


def mfcc(waves: np.ndarray, cfg: FeatureConfig, any_length: bool = False) -> np.ndarray:
    """MFCCs of one clip ``(samples,)`` or a batch ``(n, samples)`` -> ``(..., frames, n_mfcc)`` float32."""
    import librosa

    coeffs = librosa.feature.mfcc(S=log_mel(waves, cfg, any_length), n_mfcc=cfg.n_mfcc, dct_type=2, norm="ortho")
    return np.swapaxes(coeffs, -1, -2).astype(np.float32)


def extract(waves: np.ndarray, cfg: FeatureConfig, any_length: bool = False) -> np.ndarray:
    """The model's input features of one clip or a batch -> ``(..., frames, n_coeffs)`` float32.

    ``any_length``: audio of any length (at least one FFT window), e.g. a clip padded for the
    serving's test-time shifts, whose frames are then sliced (see :func:`log_mel`)."""
    if cfg.kind == "mfcc":
        return mfcc(waves, cfg, any_length)
    return np.swapaxes(log_mel(waves, cfg, any_length), -1, -2).astype(np.float32)


def clip_features(samples: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Pad/crop one waveform to the clip length and return its features ``(frames, n_coeffs)``."""
    from kws.audio import fix_length

    return extract(fix_length(samples, cfg.clip_samples), cfg)
