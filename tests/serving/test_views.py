"""The shared-trunk multi-view model (kws.views): a short clip's test-time shifts in one invoke.

A tiny REAL ds_cnn bundle (trained on the real clips, with int8 and the views model) scored on
REAL clips of ../shared/data/speech_commands_real: the views model against the batch of views it
replaces, the predictor's choice and its fallbacks (no views model, other shifts, the Keras
runtime, a broken or foreign views file, a views model whose answers are not probabilities), the
reload of a bundle whose views model broke, and the build for an existing bundle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kws import views as kv
from kws.audio import fix_length, load_file
from kws.errors import BundleError
from kws.features import FeatureConfig
from kws.serving import predictor as pm
from kws.serving import registry
from kws.views import VIEW_SHIFTS_MS
from tests.support.bundles import build_tiny_bundle
from tests.support.serving import CountingRuntime

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "speech_commands_real"
VIEWS_FILES = (kv.VIEWS_FILE, kv.VIEWS_INT8_FILE, kv.VIEWS_INFO_FILE)
# How close the views model must stay to the batch of views on real clips. They differ only where
# a view's edge steps see the real neighbouring frames instead of its convolutions' zero padding:
# a few of the trunk's 25 time steps, averaged with the rest by the global pooling, so the scores
# move a little, and a clip whose top two classes are nearly tied may flip. int8 adds its own
# rounding (the scores' 1/256 steps, one more quantized layer) on both sides. The bounds allow a
# few times the typical difference and one flip in twenty; the clip alone would pass them too
# (the shifts move a clip's scores little), so the crops' alignment is tested exactly on its own.
MEAN_ABS = {"tflite": 0.02, "tflite_int8": 0.03}
AGREEMENT = 0.95
# the tiny bundle's features (the defaults); the views model takes 2 more frames each side
FRAMES, COEFFS = FeatureConfig().shape


@pytest.fixture(scope="module")
def dscnn(tmp_path_factory, sample) -> Path:
    """A tiny real ds_cnn bundle with int8 and the views model for the default shifts."""
    return build_tiny_bundle(tmp_path_factory.mktemp("views") / "model", sample_dir=sample,
                             architecture="ds_cnn", int8=True, views=True)


@pytest.fixture(scope="module")
def no_views(dscnn, tmp_path_factory) -> Path:
    """The same bundle without its views model."""
    out = tmp_path_factory.mktemp("no-views") / "model"
    shutil.copytree(dscnn, out, ignore=shutil.ignore_patterns(*VIEWS_FILES))
    return out


@pytest.fixture(scope="module")
def real_waves() -> np.ndarray:
    """Every 40th clip of the real pool (all words), padded/cropped to one second."""
    if not REAL.is_dir():
        pytest.skip(f"real clips not found at {REAL}")
    return np.stack([fix_length(load_file(p, 16000), 16000) for p in sorted(REAL.glob("*/*.wav"))[::40]])


def _copy(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(bundle, out)
    return out


def test_the_export_writes_it_with_its_shifts_and_check(dscnn):
    info = json.loads((dscnn / kv.VIEWS_INFO_FILE).read_text())
    assert info["shift_frames"] == [0, -2, 2] and info["shifts_ms"] == [0.0, -40.0, 40.0]
    assert info["pad_frames"] == 2 and info["input_frames"] == FRAMES + 4
    assert info["files"] == {"tflite": kv.VIEWS_FILE, "tflite_int8": kv.VIEWS_INT8_FILE}
    assert (dscnn / kv.VIEWS_FILE).is_file() and (dscnn / kv.VIEWS_INT8_FILE).is_file()
    for runtime in ("tflite", "tflite_int8"):
        check = info["check"][runtime]
        assert check["argmax_agreement"] >= AGREEMENT and check["mean_abs_diff"] < MEAN_ABS[runtime], check


@pytest.mark.parametrize("runtime", ["tflite", "tflite_int8"])
def test_views_model_is_close_to_the_batch_of_views_on_real_clips(dscnn, no_views, real_waves, runtime):
    views = pm.Predictor(dscnn, tta_shifts_ms=VIEW_SHIFTS_MS, runtime=runtime, warmup=False)
    batch = pm.Predictor(no_views, tta_shifts_ms=VIEW_SHIFTS_MS, runtime=runtime, warmup=False)
    assert views.clip_path["rule"] == "views_model" and batch.clip_path["rule"] == "batch_of_views"
    got, want = views.clip_scores(real_waves), batch.clip_scores(real_waves)
    diff = np.abs(got - want)
    agreement = float(np.mean(got.argmax(1) == want.argmax(1)))
    assert diff.mean() < MEAN_ABS[runtime] and agreement >= AGREEMENT, (diff.mean(), diff.max(), agreement)


def test_each_crop_is_its_views_trunk_output_in_the_middle_and_one_step_off_is_not(dscnn, real_waves):
    """The crops' alignment, exactly: what the build checks (and refuses a model on), with real clips."""
    import keras

    from kws.features import extract

    model = keras.saving.load_model(dscnn / "model.keras", compile=False)
    trunk, _, stride = kv.split_trunk(model)
    cfg = FeatureConfig()
    edge = 2 * cfg.hop_length
    rows = extract(np.pad(real_waves[:4], ((0, 0), (edge, edge))), cfg, any_length=True)[..., None]
    inp = keras.Input(rows.shape[1:])
    x = inp
    for layer in trunk:
        x = layer(x)
    padded, alone = keras.Model(inp, x), keras.Model(model.inputs[0], trunk[-1].output)
    kv._check_alignment(padded, alone, 2, (0, -2, 2), [1, 2, 0], rows)  # (pad - k) / stride
    with pytest.raises(BundleError, match="does not match the separate view"):
        kv._check_alignment(padded, alone, 2, (0, -2, 2), [0, 2, 0], rows)
    assert stride == 2


@pytest.mark.parametrize("runtime, file", [("tflite", kv.VIEWS_FILE), ("tflite_int8", kv.VIEWS_INT8_FILE)])
def test_one_invoke_of_one_padded_clip_and_the_scan_unchanged(dscnn, real_waves, runtime, file):
    pred = pm.Predictor(dscnn, tta_shifts_ms=VIEW_SHIFTS_MS, runtime=runtime)
    assert pred.describe()["clip_path"] == {"rule": "views_model", "file": file,
                                            "why": f"built for these shifts ({file})"}
    views, single = CountingRuntime(pred._views), CountingRuntime(pred.runtime)
    pred._views, pred.runtime = views, single
    answer = pred.predict(real_waves[0])
    assert views.calls == [(1, FRAMES + 4, COEFFS, 1)] and single.calls == []
    assert answer["keyword"] in pred.labels
    pred.predict(np.concatenate(real_waves[:3]))  # long audio: the 1 s windows, no shifts
    assert len(views.calls) == 1 and single.calls and all(s[1:] == (FRAMES, COEFFS, 1) for s in single.calls)


@pytest.mark.parametrize("kwargs, why", [
    ({"tta_shifts_ms": (0, -60, 60)}, "built for shifts of [-2, 0, 2] frames, the service uses [-3, 0, 3]"),
    ({"runtime": "keras"}, "no keras variant"),
    ({"use_views": False}, "use_views is off"),
])
def test_other_shifts_or_runtimes_use_the_batch_of_views(dscnn, kwargs, why):
    pred = pm.Predictor(dscnn, warmup=False, **{"tta_shifts_ms": VIEW_SHIFTS_MS, **kwargs})
    assert pred.clip_path["rule"] == "batch_of_views" and why in pred.clip_path["why"], pred.clip_path
    assert pred._views is None


def test_the_same_shifts_in_another_order_use_it_and_no_shifts_is_the_clip_alone(dscnn, no_views):
    assert pm.Predictor(dscnn, warmup=False, tta_shifts_ms=(40, 0, -40)).clip_path["rule"] == "views_model"
    assert pm.Predictor(dscnn, warmup=False, tta_shifts_ms=(0,)).describe()["clip_path"] == {"rule": "clip_alone"}
    pred = pm.Predictor(no_views, tta_shifts_ms=VIEW_SHIFTS_MS, runtime="tflite", warmup=False)
    assert pred.describe()["clip_path"] == {"rule": "batch_of_views", "views": 3,
                                            "why": "the bundle has no views model (views.json)"}


def _not_probabilities(path: Path) -> None:
    """A views model of the right shapes whose answers are no softmax."""
    import keras

    from kws.bundle import to_tflite

    inp = keras.Input((FRAMES + 4, COEFFS, 1))
    out = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(inp))
    path.write_bytes(to_tflite(keras.Model(inp, out)))


@pytest.mark.parametrize("damage, why", [
    (lambda b: (b / kv.VIEWS_FILE).write_bytes(b"garbage!" * 4096), "cannot be loaded"),
    (lambda b: (b / kv.VIEWS_FILE).write_bytes((b / kv.VIEWS_FILE).read_bytes()[:5000]), "cannot be loaded"),
    (lambda b: shutil.copy(b / "model.tflite", b / kv.VIEWS_FILE), f"takes ({FRAMES}, {COEFFS}, 1)"),
    (lambda b: _not_probabilities(b / kv.VIEWS_FILE), "not probabilities"),
    (lambda b: (b / kv.VIEWS_INFO_FILE).write_text("{not json"), "unreadable"),
    (lambda b: (b / kv.VIEWS_FILE).unlink(), "which is missing"),
])
def test_a_broken_views_model_leaves_the_bundle_served_by_the_batch(dscnn, no_views, real_waves, tmp_path,
                                                                   damage, why):
    bundle = _copy(dscnn, tmp_path)
    damage(bundle)
    pred = pm.Predictor(bundle, tta_shifts_ms=VIEW_SHIFTS_MS, runtime="tflite")  # warmed up: its answers checked
    assert pred.clip_path["rule"] == "batch_of_views" and why in pred.clip_path["why"], pred.clip_path
    want = pm.Predictor(no_views, tta_shifts_ms=VIEW_SHIFTS_MS, runtime="tflite", warmup=False).clip_scores(real_waves[:8])
    np.testing.assert_allclose(pred.clip_scores(real_waves[:8]), want, atol=1e-6)


def test_a_reload_swaps_in_a_bundle_whose_views_model_broke_and_serves_it(dscnn, real_waves, tmp_path):
    bundle = _copy(dscnn, tmp_path)
    registry.reset()
    try:
        old = registry.get_predictor(bundle, runtime="tflite", tta_shifts_ms=VIEW_SHIFTS_MS)
        assert old.clip_path["rule"] == "views_model"
        (bundle / kv.VIEWS_FILE).write_bytes(b"garbage!" * 4096)  # in place: only the views file changes
        swapped = registry.reload_if_changed(bundle, runtime="tflite", tta_shifts_ms=VIEW_SHIFTS_MS)
        assert swapped is not None, "the fingerprint missed the views file"
        new = swapped[1]
        assert new.clip_path["rule"] == "batch_of_views" and "cannot be loaded" in new.clip_path["why"]
        assert new.predict(real_waves[0])["keyword"] in new.labels
    finally:
        registry.reset()


def test_built_for_an_existing_bundle_from_the_command_line(no_views, tmp_path, capsys):
    bundle = _copy(no_views, tmp_path)
    before = pm.bundle_fingerprint(bundle)
    assert kv.main([str(bundle)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shift_frames"] == [0, -2, 2] and info["source"] == "kws.views"
    assert info["files"] == {"tflite": kv.VIEWS_FILE}  # no calibration rows given: no int8 variant
    assert pm.bundle_fingerprint(bundle) != before  # a serving process reloads it
    assert pm.Predictor(bundle, tta_shifts_ms=VIEW_SHIFTS_MS, runtime="tflite", warmup=False).clip_path["rule"] == "views_model"
    why = pm.Predictor(bundle, tta_shifts_ms=VIEW_SHIFTS_MS, runtime="tflite_int8", warmup=False).clip_path["why"]
    assert why == "its views model has no tflite_int8 variant"


def test_architectures_or_shifts_that_do_not_allow_it(bundle, keras_model, dscnn, tmp_path, capsys):
    import keras

    with pytest.raises(BundleError, match="no GlobalAveragePooling2D|not time-shift equivariant"):
        kv.views_model(keras_model, (0, -2, 2))  # cnn_seed: valid convolutions, then Flatten
    model = keras.saving.load_model(dscnn / "model.keras", compile=False)
    with pytest.raises(BundleError, match="not multiples of .* time stride 2"):
        kv.views_model(model, (0, -1, 1))
    cnn = _copy(bundle, tmp_path / "cnn")
    assert kv.add_views(cnn) is None and not any((cnn / f).exists() for f in VIEWS_FILES)
    odd = _copy(dscnn, tmp_path / "odd")
    assert kv.main([str(odd), "--shifts-ms", "0,-20,20"]) == 1
    assert "allow no views model" in capsys.readouterr().err
    assert json.loads((odd / kv.VIEWS_INFO_FILE).read_text())["shift_frames"] == [0, -2, 2]  # left as it was
