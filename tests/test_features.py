"""The one feature front end: its STFT against librosa's, on real clips and any batch shape."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest

from kws.audio import fix_length, load_file
from kws.features import FeatureConfig, extract, log_mel

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech_commands_real"


@pytest.fixture(scope="module")
def real_waves() -> np.ndarray:
    """Every 60th clip of the real pool (all words), padded/cropped to one second."""
    if not REAL.is_dir():
        pytest.skip(f"real clips not found at {REAL}")
    return np.stack([fix_length(load_file(p, 16000), 16000) for p in sorted(REAL.glob("*/*.wav"))[::60]])


def librosa_log_mel(waves: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """The front end as training computed it before: librosa.stft + librosa.power_to_db."""
    spec = librosa.stft(waves, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                        window="hann", center=False)
    mel = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
                              fmax=cfg.fmax).astype(np.float32) @ (np.abs(spec) ** 2)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)


@pytest.mark.parametrize("win_length", [640, 480])
def test_log_mel_is_librosas_on_real_clips(real_waves, win_length):
    cfg = FeatureConfig(kind="logmel", win_length=win_length)
    ours, ref = log_mel(real_waves, cfg), librosa_log_mel(real_waves, cfg)
    assert ours.shape == ref.shape == (len(real_waves), cfg.n_mels, cfg.n_frames)
    loud = ref > ref.max() - 80  # where the floor (1e-10) is not reached; there both are the floor
    np.testing.assert_allclose(ours[loud], ref[loud], atol=1e-3)
    assert np.abs(ours - ref).max() < 0.05


def test_any_batch_shape_and_length_gives_each_clips_own_frames(real_waves):
    cfg = FeatureConfig(kind="mfcc")
    one = extract(real_waves[0], cfg)
    batch = extract(real_waves[:3], cfg)
    assert one.shape == cfg.shape and batch.shape == (3, *cfg.shape)
    np.testing.assert_array_equal(batch[0], one)
    longer = extract(np.concatenate([real_waves[0], real_waves[1]]), cfg, any_length=True)
    assert longer.shape[0] == 1 + (32000 - cfg.n_fft) // cfg.hop_length
    np.testing.assert_allclose(longer[: cfg.n_frames], one, atol=1e-4)  # a frame depends on its own window only
    with pytest.raises(ValueError, match="shorter than one FFT window"):
        extract(real_waves[0][:100], cfg, any_length=True)


def test_pinned_frontend_is_librosas_and_gives_the_same_features(tmp_path, real_waves):
    from kws import features

    cfg = FeatureConfig(kind="logmel", n_mels=32, fmax=7000.0)  # parameters no other test uses
    path = tmp_path / features.FRONTEND_FILE
    features.save_frontend(path, cfg)
    computed = log_mel(real_waves[:4], cfg)
    with np.load(path) as saved:
        np.testing.assert_array_equal(saved["mel_basis"], librosa.filters.mel(
            sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=32, fmin=cfg.fmin, fmax=7000.0).astype(np.float32))
        assert saved["window"].shape == (cfg.n_fft,)
    features._ARRAYS.clear()  # as in a fresh process
    features.load_frontend(path, cfg)
    np.testing.assert_array_equal(log_mel(real_waves[:4], cfg), computed)


@pytest.mark.parametrize("damage", ["truncated", "wrong_shape", "nan"])
def test_a_bad_frontend_file_is_refused(tmp_path, damage):
    from kws import features
    from kws.errors import ConfigError

    cfg = FeatureConfig(kind="logmel")
    path = tmp_path / features.FRONTEND_FILE
    arrays = dict(features.frontend_arrays(cfg))
    if damage == "wrong_shape":
        arrays["mel_basis"] = arrays["mel_basis"][:20]
    if damage == "nan":
        arrays["window"] = np.full_like(arrays["window"], np.nan)
    np.savez(path, **arrays)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ConfigError, match="front-end file|expected"):
        features.load_frontend(path, cfg)


def test_mfcc_is_librosas_on_real_clips(real_waves):
    cfg = FeatureConfig(kind="mfcc")
    ref = librosa.feature.mfcc(S=log_mel(real_waves, cfg), n_mfcc=cfg.n_mfcc, dct_type=2, norm="ortho")
    np.testing.assert_allclose(extract(real_waves, cfg), np.swapaxes(ref, -1, -2), rtol=1e-5, atol=1e-3)
