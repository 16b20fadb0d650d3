"""int8 post-training quantization at export: the bundle's model_int8.tflite, its export check,
the runtime switch (KWS_RUNTIME=auto|tflite|tflite_int8|keras) and its errors.

The bundle is the tiny REAL model of the serving tests (trained for seconds on the real digit
sample of ../shared/data), exported with int8; clips are real ones from the same sample.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from kws.audio import load_file
from kws.bundle import INFO_FILE, TFLITE_FILE, TFLITE_INT8_FILE, int8_check
from kws.errors import BundleError, ConfigError
from kws.serving import predictor as pm
from kws.serving import registry

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech_commands_sample"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real Speech Commands sample not found at {SAMPLE}")


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory) -> Path:
    from tests.support.bundles import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("int8") / "model", sample_dir=SAMPLE, int8=True)


@pytest.fixture(scope="module")
def word_clips() -> list[tuple[str, np.ndarray]]:
    return [(p.parent.name, load_file(p, 16000)) for w in ("one", "two", "three")
            for p in sorted((SAMPLE / w).glob("*.wav"))]


def _copy(bundle: Path, dest: Path, int8_default: bool | None = None, drop_int8: bool = False) -> Path:
    shutil.copytree(bundle, dest)
    if drop_int8:
        (dest / TFLITE_INT8_FILE).unlink()
    if int8_default is not None:
        info = json.loads((dest / INFO_FILE).read_text())
        info["int8"]["default"] = int8_default
        (dest / INFO_FILE).write_text(json.dumps(info))
    return dest


def test_export_writes_int8_beside_float32_with_its_check(int8_bundle):
    float_bytes, int8_bytes = (int8_bundle / TFLITE_FILE).stat().st_size, (int8_bundle / TFLITE_INT8_FILE).stat().st_size
    assert int8_bytes < float_bytes / 2.5
    check = json.loads((int8_bundle / INFO_FILE).read_text())["int8"]
    assert (check["float32_bytes"], check["int8_bytes"]) == (float_bytes, int8_bytes)
    assert 0 < check["int8_accuracy"] <= 1 and 0 < check["float32_accuracy"] <= 1
    loss = 100 * (check["float32_accuracy"] - check["int8_accuracy"])
    assert check["loss_points"] == pytest.approx(loss, abs=1e-3)
    assert check["default"] is (loss <= check["max_loss_points"] + 1e-9) and check["max_loss_points"] == 0.5


def test_int8_bundle_loads_and_answers_like_float32(int8_bundle, word_clips):
    int8, f32 = pm.Predictor(int8_bundle, runtime="tflite_int8"), pm.Predictor(int8_bundle, runtime="tflite")
    assert (int8.runtime.name, f32.runtime.name) == ("tflite_int8", "tflite")
    assert int8.describe()["runtime"] == "tflite_int8"
    agree = 0
    for word, samples in word_clips:
        a, b = int8.predict(samples), f32.predict(samples)
        assert a["keyword"] in int8.labels and 0 < a["confidence"] <= 1
        agree += a["keyword"] == b["keyword"]
        np.testing.assert_allclose(int8.scores_clip(samples), f32.scores_clip(samples), atol=0.15)
    assert agree >= len(word_clips) - 1
    assert not np.array_equal(int8.scores_clip(word_clips[0][1]), f32.scores_clip(word_clips[0][1])), \
        "int8 gave float32's exact scores: it is not the quantized model"


def test_auto_runtime_follows_the_export_check(int8_bundle, tmp_path):
    chosen = _copy(int8_bundle, tmp_path / "chosen", int8_default=True)
    refused = _copy(int8_bundle, tmp_path / "refused", int8_default=False)
    missing = _copy(int8_bundle, tmp_path / "missing", int8_default=True, drop_int8=True)
    assert pm.Predictor(chosen, runtime="auto", warmup=False).runtime.name == "tflite_int8"
    assert pm.Predictor(refused, runtime="auto", warmup=False).runtime.name == "tflite"
    assert pm.Predictor(missing, runtime="auto", warmup=False).runtime.name == "tflite"


def test_int8_asked_for_but_absent_is_a_bundle_error(int8_bundle, tmp_path):
    plain = _copy(int8_bundle, tmp_path / "plain", drop_int8=True)
    with pytest.raises(BundleError, match=f"no {TFLITE_INT8_FILE}.*KWS_RUNTIME=tflite"):
        pm.Predictor(plain, runtime="tflite_int8")
    registry.reset()
    with pytest.raises(BundleError, match=TFLITE_INT8_FILE):
        registry.get_predictor(plain, runtime="tflite_int8")
    registry.reset()


def test_a_broken_int8_file_is_a_bundle_error(int8_bundle, tmp_path):
    broken = _copy(int8_bundle, tmp_path / "broken")
    (broken / TFLITE_INT8_FILE).write_bytes(b"not a flatbuffer" * 10)
    with pytest.raises(BundleError, match=f"{TFLITE_INT8_FILE} cannot be loaded"):
        pm.Predictor(broken, runtime="tflite_int8")


def test_bad_runtime_is_a_config_error(int8_bundle):
    from kws.serving.app import load_config

    with pytest.raises(ConfigError, match="KWS_RUNTIME must be one of auto, tflite, tflite_int8, keras"):
        load_config(environ={"KWS_RUNTIME": "int8"})
    with pytest.raises(ConfigError, match="unknown runtime 'onnx'"):
        pm.Predictor(int8_bundle, runtime="onnx")
    assert load_config(environ={})["runtime"] == "auto"
    assert load_config(environ={"KWS_RUNTIME": "tflite_int8"})["runtime"] == "tflite_int8"


def test_the_app_serves_the_int8_model(int8_bundle, word_clips):
    from kws.serving.app import create_app
    from tests.support.bundles import wav_bytes

    client = create_app({"model_dir": str(int8_bundle), "runtime": "tflite_int8", "preload": False}).test_client()
    word, samples = word_clips[0]
    resp = client.post("/predict", data={"file": (io.BytesIO(wav_bytes(samples)), "clip.wav")})
    body = resp.get_json()
    assert resp.status_code == 200, body
    assert body["model"]["runtime"] == "tflite_int8" and body["keyword"] in json.loads(
        (int8_bundle / "labels.json").read_text())["labels"]
    registry.reset()


def test_int8_check_applies_the_loss_rule(int8_bundle):
    f32, i8 = (int8_bundle / TFLITE_FILE).read_bytes(), (int8_bundle / TFLITE_INT8_FILE).read_bytes()
    x = np.random.default_rng(0).standard_normal((40, 49, 13)).astype(np.float32) * 10
    y = np.zeros(40, int)
    strict = int8_check(f32, i8, x, y, max_loss_points=-100.0)
    lax = int8_check(f32, i8, x, y, max_loss_points=100.0)
    assert strict["default"] is False and lax["default"] is True
    assert strict["int8_accuracy"] == lax["int8_accuracy"] and strict["check_examples"] == 40
    with pytest.raises(BundleError, match="held-out"):
        int8_check(f32, i8, x[:0], y[:0])
