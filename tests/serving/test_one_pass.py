"""One feature pass and one runtime call per clip: the test-time shifts as frame offsets.

The one-pass rule (features of the clip zero-padded by the largest shift, sliced at whole-frame
offsets, all views in one batch) against the three-pass rule it replaces (each zero-filled
shifted clip through the features and the runtime on its own), on REAL clips of
../shared/data/speech_commands_real; and the KWS_TTA_SHIFTS_MS rule (whole hops, rounded).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from kws.audio import fix_length, load_file, time_shift
from kws.features import FeatureConfig, extract
from kws.serving import predictor as pm
from kws.views import VIEW_SHIFTS_MS
from tests.support.serving import CountingRuntime

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "speech_commands_real"


@pytest.fixture(scope="module")
def real_waves() -> np.ndarray:
    """Every 40th clip of the real pool (all words), padded/cropped to one second."""
    if not REAL.is_dir():
        pytest.skip(f"real clips not found at {REAL}")
    paths = sorted(REAL.glob("*/*.wav"))[::40]
    return np.stack([fix_length(load_file(p, 16000), 16000) for p in paths])


def three_pass(pred: pm.Predictor, waves: np.ndarray, shifts_ms) -> np.ndarray:
    """The previous rule: every shifted clip (zero-filled) through the features and the runtime."""
    rows = []
    for ms in shifts_ms:
        moved = np.stack([time_shift(w, int(round(ms * pred.cfg.sample_rate / 1000))) for w in waves])
        rows.append(pred.runtime.infer(pred.features(moved)))
    return np.mean(rows, axis=0)


@pytest.mark.parametrize("kind", ["mfcc", "logmel"])
def test_sliced_features_are_the_shifted_clips_features(kind, real_waves):
    cfg = FeatureConfig(kind=kind)
    pad = 3 * cfg.hop_length
    padded = extract(np.pad(real_waves[:20], ((0, 0), (pad, pad))), cfg, any_length=True)
    assert padded.shape[1] == cfg.n_frames + 6
    for k in (-3, -2, 0, 2, 3):
        want = extract(np.stack([time_shift(w, k * cfg.hop_length) for w in real_waves[:20]]), cfg)
        np.testing.assert_allclose(padded[:, 3 - k:3 - k + cfg.n_frames], want, atol=1e-4)


@pytest.mark.parametrize("shifts", [(0, -40, 40), (0, -60, 120, 20)])  # asymmetric: the sign matters
def test_one_pass_equals_three_pass_on_real_clips(bundle, real_waves, shifts):
    pred = pm.Predictor(bundle, tta_shifts_ms=shifts, warmup=False)
    assert pred.tta_shifts_ms == tuple(float(s) for s in shifts)
    one, old = pred.clip_scores(real_waves), three_pass(pred, real_waves, shifts)
    assert np.abs(one - old).max() < 1e-5
    assert (one.argmax(1) == old.argmax(1)).all()
    plain = pred.runtime.infer(pred.features(real_waves))
    assert np.abs(one - plain).max() > 1e-3, "the shifts changed nothing: the comparison proves nothing"


def test_predict_answers_as_the_three_pass_rule(bundle, real_waves):
    pred = pm.Predictor(bundle, tta_shifts_ms=VIEW_SHIFTS_MS)
    for wave in real_waves[:12]:
        want = three_pass(pred, wave[None], VIEW_SHIFTS_MS)[0]
        got = pred.predict(wave)
        assert got["keyword"] == pred.labels[int(np.argmax(want))]
        assert got["confidence"] == pytest.approx(float(want.max()), abs=1e-5)


def test_one_runtime_call_per_clip_and_a_bucket_that_fits(bundle, real_waves):
    pred = pm.Predictor(bundle, tta_shifts_ms=VIEW_SHIFTS_MS, warmup=False)
    assert len(pred.tta_shifts_ms) in pred.runtime._buckets  # the views are never padded up to 8
    counting = pred.runtime = CountingRuntime(pred.runtime)
    pred.predict(real_waves[0])
    assert [c[0] for c in counting.calls] == [len(VIEW_SHIFTS_MS)]
    counting.calls.clear()
    pred.clip_scores(real_waves[:5])
    assert [c[0] for c in counting.calls] == [5 * len(VIEW_SHIFTS_MS)]


def test_shifts_are_rounded_to_whole_hops_and_reported(bundle, caplog):
    with caplog.at_level(logging.WARNING, logger="kws.serving.predictor"):
        pred = pm.Predictor(bundle, tta_shifts_ms=(0, -50, 50, 30, -10), warmup=False)
    assert pred.tta_shifts_ms == (0.0, -60.0, 60.0, 40.0, -20.0)  # half a hop rounds away from zero
    assert pred.describe()["tta_shifts_ms"] == [0.0, -60.0, 60.0, 40.0, -20.0]
    assert "whole feature hops" in caplog.text and "50->60" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kws.serving.predictor"):
        pm.Predictor(bundle, tta_shifts_ms=(0, -40, 40), warmup=False)
    assert "whole feature hops" not in caplog.text


def test_shifts_off_is_one_plain_view(bundle, real_waves):
    pred = pm.Predictor(bundle, tta_shifts_ms=(0,), warmup=False)
    np.testing.assert_allclose(pred.clip_scores(real_waves[:4]), pred.runtime.infer(pred.features(real_waves[:4])),
                               atol=1e-6)
    assert pred.runtime._buckets == (1, 8, 32)
