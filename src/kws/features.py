"""Audio features: the ONE implementation used by training (prepare stage) and serving.

``kind: mfcc`` gives ``n_mfcc`` cepstral coefficients per 20 ms frame, ``kind: logmel`` the
``n_mels`` log-mel energies they are computed from (the front end most small-footprint KWS
networks use). Both share the same STFT and mel filterbank code below.

``features.json`` in every model bundle is :meth:`FeatureConfig.to_dict`, so the
service recomputes exactly the features the model was trained on. The bundle also pins the
front end's arrays, librosa's mel filterbank and window (``frontend.npz``,
:func:`save_frontend`); a process that loads them (:func:`load_frontend`) never imports librosa
for the log-mel features: that import (scipy.signal, numba) is most of a serving process's
start-up and of a ``kws-score`` or ``kws-predict`` run, and the pinned arrays stay those the
model was trained with whatever librosa a later installation brings.
"""

from __future__ import annotations

import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kws.errors import ConfigError

KINDS = ("mfcc", "logmel")
#: The floor of the log-mel energies (power), as ``librosa.power_to_db(amin=...)``.
AMIN = 1e-10
FRONTEND_FILE = "frontend.npz"


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


# The front end's arrays, keyed by the parameters that define them: pinned from a bundle
# (load_frontend) or computed by librosa on first use.
_ARRAYS: dict[tuple, dict[str, np.ndarray]] = {}


def _key(cfg: FeatureConfig) -> tuple:
    return (cfg.sample_rate, cfg.n_fft, cfg.win_length, cfg.n_mels, cfg.fmin, cfg.fmax)


def frontend_arrays(cfg: FeatureConfig) -> dict[str, np.ndarray]:
    """``mel_basis`` ``(n_mels, 1 + n_fft // 2)`` and ``window`` ``(n_fft,)``, float32: pinned, else librosa's."""
    key = _key(cfg)
    if key not in _ARRAYS:
        import librosa

        window = librosa.filters.get_window("hann", cfg.win_length, fftbins=True)
        _ARRAYS[key] = {
            "mel_basis": librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
                                             fmax=cfg.fmax).astype(np.float32),
            "window": librosa.util.pad_center(window, size=cfg.n_fft).astype(np.float32),  # as librosa.stft pads it
        }
    return _ARRAYS[key]


def save_frontend(path: str | Path, cfg: FeatureConfig) -> None:
    """Write the front end's arrays for ``cfg`` to ``path`` (a bundle's ``frontend.npz``)."""
    with open(path, "wb") as f:
        np.savez(f, **frontend_arrays(cfg))


def load_frontend(path: str | Path, cfg: FeatureConfig) -> None:
    """Pin the arrays of ``path`` (:func:`save_frontend`) for ``cfg``'s features in this process.

    Raises :class:`ConfigError` when the file is unreadable or its arrays do not fit ``cfg``."""
    want = {"mel_basis": (cfg.n_mels, 1 + cfg.n_fft // 2), "window": (cfg.n_fft,)}
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: np.asarray(f[name], np.float32) for name in want}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{path} is not a front-end file with {' and '.join(want)}: {err}") from None
    for name, shape in want.items():
        if arrays[name].shape != shape or not np.all(np.isfinite(arrays[name])):
            raise ConfigError(f"{path}: {name} has shape {arrays[name].shape}, expected {shape} of finite values "
                              "for these features.json parameters")
    _ARRAYS[_key(cfg)] = arrays


def _stft(waves: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """``librosa.stft(..., window="hann", center=False)`` of ``(..., samples)`` -> ``(..., 1 + n_fft // 2,
    frames)``: the same frames and window, one real FFT over a strided view. librosa's own
    checks, block loop and copies cost more than the transform on a one-second clip, and every
    answer of the service pays for them (tests/test_features.py compares the two)."""
    import scipy.fft

    frames = np.lib.stride_tricks.sliding_window_view(waves, cfg.n_fft, axis=-1)[..., ::cfg.hop_length, :]
    return np.swapaxes(scipy.fft.rfft(frames * frontend_arrays(cfg)["window"], axis=-1), -1, -2)


def log_mel(waves: np.ndarray, cfg: FeatureConfig, any_length: bool = False) -> np.ndarray:
    """Log-mel energies (dB) of one clip ``(samples,)`` or a batch ``(n, samples)`` -> ``(..., n_mels, frames)``.

    Each clip must already be ``cfg.clip_samples`` long (see :func:`kws.audio.fix_length`), unless
    ``any_length``: then any length of at least one FFT window. Every frame depends on its own
    window only (no centring, a fixed log floor, not a per-array ``top_db``), so results depend
    neither on batching nor on the audio around a frame.
    """
    waves = np.asarray(waves, dtype=np.float32)
    if not any_length and waves.shape[-1] != cfg.clip_samples:
        raise ValueError(f"expected clips of {cfg.clip_samples} samples, got {waves.shape[-1]}")
    if waves.shape[-1] < cfg.n_fft:
        raise ValueError(f"audio of {waves.shape[-1]} samples is shorter than one FFT window ({cfg.n_fft})")
    spec = _stft(waves, cfg)
    power = spec.real**2 + spec.imag**2
    mel = frontend_arrays(cfg)["mel_basis"] @ power  # BLAS, batched
    return 10.0 * np.log10(np.maximum(mel, AMIN))  # librosa.power_to_db(mel, ref=1.0, amin=AMIN, top_db=None)


def mfcc(waves: np.ndarray, cfg: FeatureConfig, any_length: bool = False) -> np.ndarray:
    """MFCCs of one clip ``(samples,)`` or a batch ``(n, samples)`` -> ``(..., frames, n_mfcc)`` float32:
    the orthonormal DCT-II of the log-mel energies, what ``librosa.feature.mfcc(S=..., dct_type=2,
    norm="ortho")`` computes (tests/test_features.py compares them)."""
    import scipy.fft

    coeffs = scipy.fft.dct(log_mel(waves, cfg, any_length), type=2, norm="ortho", axis=-2)[..., : cfg.n_mfcc, :]
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
