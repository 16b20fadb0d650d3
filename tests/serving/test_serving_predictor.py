"""The model service in-process: runtimes, parity with Keras, windows, NMS, the singleton."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kws.audio import fix_length, load_file
from kws.bundle import read_meta
from kws.errors import BundleError, ModelNotFoundError
from kws.labels import SILENCE, UNKNOWN
from kws.serving import predictor as pm
from kws.serving import registry
from tests.support.bundles import long_recording
from tests.support.serving import offline_scores


@pytest.fixture(scope="module")
def tflite(bundle):
    return pm.Predictor(bundle, runtime="tflite")


@pytest.fixture(scope="module")
def keras_pred(bundle):
    return pm.Predictor(bundle, runtime="keras")


def test_both_runtimes_match_offline_keras(tflite, keras_pred, keras_model, bundle, all_clips):
    cfg = read_meta(bundle).features
    for path in all_clips[::3]:
        samples = load_file(path, 16000)
        want = offline_scores(keras_model, samples, cfg)
        np.testing.assert_allclose(tflite.scores_clip(samples), want, atol=1e-4)
        np.testing.assert_allclose(keras_pred.scores_clip(samples), want, atol=1e-4)


def test_batched_scan_equals_clip_by_clip(tflite, clips):
    samples = long_recording([(0.5, clips["one"][0]), (2.0, clips["two"][0])], duration_s=3.7)
    starts, scores = tflite.scan(samples, stride_s=0.25)
    assert starts[0] == 0 and abs(starts[-1] - 2.7) < 1e-9  # last window ends at the end
    assert len(starts) == len(scores) == 12
    for s, row in zip(starts, scores):
        i = int(round(s * 16000))
        np.testing.assert_allclose(row, tflite.scores_clip(samples[i:i + 16000], tta=False), atol=1e-5)


def test_tflite_odd_batch_sizes(tflite):
    x = np.random.default_rng(1).standard_normal((45, *tflite.runtime.input_shape)).astype(np.float32)
    whole = tflite.runtime.infer(x)
    assert whole.shape == (45, len(tflite.labels))
    np.testing.assert_allclose(whole[7], tflite.runtime.infer(x[7:8])[0], atol=1e-5)
    np.testing.assert_allclose(whole[40:], tflite.runtime.infer(x[40:]), atol=1e-5)


def test_tflite_interpreters_are_per_thread(bundle):
    pred = pm.Predictor(bundle, runtime="tflite", warmup=False)
    x = np.zeros((1, *pred.runtime.input_shape), np.float32)
    before = pred.runtime.interpreters
    results = []
    threads = [threading.Thread(target=lambda: results.append(pred.runtime.infer(x))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pred.runtime.interpreters == before + 3
    assert all(np.array_equal(r, results[0]) for r in results)


def test_short_audio_is_padded_and_slightly_long_audio_uses_loudest_second(tflite, clips):
    clip = load_file(clips["two"][0], 16000)
    padded = np.concatenate([np.zeros(4000, np.float32), clip])  # 1.25 s: still "short"
    out = tflite.predict(padded, top_k=5)
    assert "detections" not in out and out["keyword"] == tflite.predict(clip)["keyword"]
    half = tflite.predict(clip[:8000])
    assert half["keyword"] in tflite.labels and len(half["scores"]) == 3


def test_threshold_answers_unknown(tflite, clips):
    clip = load_file(clips["three"][0], 16000)
    sure = tflite.predict(clip)
    out = tflite.predict(clip, threshold=min(1.0, sure["confidence"] + 1e-3))
    assert out["keyword"] == UNKNOWN and out["confidence"] == sure["confidence"]
    assert tflite.predict(clip, threshold=0.0)["keyword"] == sure["keyword"]


def test_long_audio_detections_come_from_the_streaming_detector(tflite, clips):
    """The answer's detections are exactly the detector's over the scanned windows (fed at the
    windows' centres, in time order), each spanning the window where its keyword peaked."""
    from kws.streaming.detector import StreamDetector

    samples = long_recording([(1.0, clips["two"][0]), (5.0, clips["one"][1])], duration_s=8.0, seed=1)
    out = tflite.predict(samples)
    starts, scores = tflite.scan(samples)
    want = StreamDetector(tflite.labels, tflite.detector).push_many(starts + 0.5, scores)
    assert want, "the tiny model found nothing: the comparison below proves nothing"
    assert [(d["keyword"], d["start_s"], d["confidence"]) for d in out["detections"]] == [
        (w.label, round(w.time_s - 0.5, 3), round(w.confidence, 6)) for w in want]
    assert all(d["end_s"] - d["start_s"] == pytest.approx(1.0) for d in out["detections"])
    assert tflite.predict(samples, threshold=1.0)["detections"] == []  # the request's threshold is used
    assert tflite.describe()["detector"]["source"] == "default"


def test_the_bundles_operating_point_is_used(bundle, clips, tmp_path):
    import json
    import shutil

    from kws.errors import BundleError

    copy = tmp_path / "model"
    shutil.copytree(bundle, copy)
    point = {"threshold": 0.999999, "average_window_s": 0.5, "suppression_s": 2.0, "min_count": 2}
    (copy / "detector.json").write_text(json.dumps({"settings": point, "operating_point": {"target_fa_per_hour": 10}}))
    pred = pm.Predictor(copy, warmup=False)
    assert pred.detector.to_dict() == point
    model = pred.describe()["detector"]
    assert model["source"] == "bundle" and model["threshold"] == 0.999999 and model["operating_point"]
    samples = long_recording([(1.0, clips["two"][0]), (5.0, clips["one"][1])], duration_s=8.0, seed=1)
    assert pred.predict(samples)["detections"] == []  # nothing reaches the bundle's threshold
    assert pred.predict(samples, threshold=0.3)["detections"]
    (copy / "detector.json").write_text(json.dumps({"settings": {"threshold": 2}}))
    with pytest.raises(BundleError, match="detector.json is invalid.*threshold"):
        pm.Predictor(copy, warmup=False)


def test_long_recording_detections(tflite, clips):
    placed = [(4.0, clips["two"][1]), (12.5, clips["three"][0]), (21.0, clips["one"][2])]
    out = tflite.predict(long_recording(placed, duration_s=30.0, seed=3))
    found = {(d["keyword"], d["start_s"]) for d in out["detections"]}
    for start, path in placed:
        word = path.parent.name
        assert any(k == word and abs(s - start) <= 0.5 for k, s in found), (word, start, out["detections"])
    assert out["keyword"] in {"one", "two", "three"}
    assert out["scan"]["windows"] == 117


def test_silence_only_long_audio(tflite):
    rng = np.random.default_rng(0)
    out = tflite.predict((rng.standard_normal(16000 * 4) * 1e-3).astype(np.float32))
    assert out["detections"] == [] and out["keyword"] in (SILENCE, UNKNOWN)


def test_singleton_loads_once_under_concurrency(bundle, monkeypatch):
    registry.reset()
    calls = []
    real = pm.Predictor

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(registry, "Predictor", counting)
    got = []
    threads = [threading.Thread(target=lambda: got.append(registry.get_predictor(bundle, stride_s=0.5))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 8 and all(g is got[0] for g in got)
    assert registry.peek(bundle, stride_s=0.5)[0] == "ready"
    registry.reset()


def test_missing_and_broken_bundles(tmp_path, bundle):
    registry.reset()
    with pytest.raises(ModelNotFoundError):
        registry.get_predictor(tmp_path / "nope")
    assert registry.peek(tmp_path / "nope")[0] == "failed"
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in bundle.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.tflite").write_bytes(b"not a flatbuffer")
    (broken / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(BundleError):
        pm.Predictor(broken, runtime="tflite")
    (broken / "labels.json").write_text('{"labels": ["a", "b"]}')
    (broken / "model.tflite").write_bytes((bundle / "model.tflite").read_bytes())
    with pytest.raises(BundleError, match="outputs"):
        pm.Predictor(broken, runtime="tflite")
    registry.reset()


def test_short_clips_are_scored_alone_or_with_test_time_shifts(bundle, tflite, clips):
    from kws.audio import time_shift
    from kws.views import VIEW_SHIFTS_MS

    samples = load_file(clips["two"][0], 16000)
    assert tflite.tta_shifts_ms == (0.0,) and tflite.describe()["tta_shifts_ms"] == [0.0]  # the default
    moves = [int(ms * 16) for ms in VIEW_SHIFTS_MS]
    plain = [tflite.scores_clip(time_shift(fix_length(samples, 16000), s), tta=False) for s in moves]
    np.testing.assert_allclose(tflite.scores_clip(samples), plain[0], atol=1e-6)
    shifted = pm.Predictor(bundle, tta_shifts_ms=VIEW_SHIFTS_MS)
    np.testing.assert_allclose(shifted.scores_clip(samples), np.mean(plain, axis=0), atol=1e-6)
    assert not np.allclose(plain[0], plain[1]), "a shift changed nothing: the test proves nothing"
