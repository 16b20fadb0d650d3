"""A broken bundle never replaces a working model (issue 22, item 4): ``model.tflite`` of the served
bundle overwritten with garbage or truncated is refused by the reload: the TFLite predictor keeps
serving (no fallback to Keras and its memory), the refusal is logged once per bundle and counted
in ``kws_model_reload_rejected_total``. The real Waitress server polling a real bundle."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from kws.errors import BundleError
from kws.serving import predictor as pm
from kws.serving import registry
from tests.support.processes import ApiProcess
from tests.support.serving import metric_value


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _metric(url: str, name: str) -> float:
    return metric_value(requests.get(f"{url}/metrics", timeout=10).text, name)


def _wait_metric(url: str, name: str, value: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _metric(url, name) >= value:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} did not reach {value} in {timeout:.0f} s (now {_metric(url, name)})")


def _still_serving(url: str, clip: bytes) -> None:
    model = requests.get(f"{url}/model", timeout=10).json()
    assert model["runtime"] == "tflite" and model["model_info"]["version"] == "test-1", model
    resp = requests.post(f"{url}/predict", files={"file": ("c.wav", clip)}, timeout=30)
    assert resp.status_code == 200 and resp.json()["model"]["runtime"] == "tflite", resp.text


def test_a_broken_model_file_never_replaces_the_served_one(tmp_path, bundle, clips):
    model_dir = tmp_path / "serving" / "model"
    shutil.copytree(bundle, model_dir)
    good = (model_dir / "model.tflite").read_bytes()
    clip = clips["one"][0].read_bytes()
    api = ApiProcess(model_dir, tmp_path / "api", env={"KWS_RELOAD_S": "0.2", "KWS_LOG_LEVEL": "INFO"})
    with api:
        _still_serving(api.url, clip)
        rss0 = _rss_mb(api.proc.pid)
        rejected = "kws_model_reload_rejected_total"
        for n, broken in enumerate([b"garbage!" * 4096, good[: len(good) // 2]], start=1):
            (model_dir / "model.tflite").write_bytes(broken)  # in place, as an operator's cp would
            _wait_metric(api.url, rejected, n)
            time.sleep(1.5)  # several more polls of the same broken bundle: not retried, not re-logged
            assert _metric(api.url, rejected) == n
            _still_serving(api.url, clip)
        grew = _rss_mb(api.proc.pid) - rss0
        (model_dir / "model.tflite").write_bytes(good)  # repaired: a new fingerprint, loads, swaps in
        _wait_metric(api.url, "kws_model_reloads_total", 1)
        assert _metric(api.url, rejected) == 2
        assert requests.get(f"{api.url}/model", timeout=10).json()["runtime"] == "tflite"
    assert grew < 200, f"RSS grew {grew:.0f} MB while refusing broken bundles (a Keras fallback loads TensorFlow)"
    log = api.log.read_text()
    assert log.count("NOT loaded, still serving kws-tiny vtest-1 (tflite runtime)") == 2, log[-3000:]
    assert "falling back" not in log and "Traceback" not in log


def test_the_warm_up_answer_check(bundle):
    pred = pm.Predictor(bundle, runtime="tflite")
    n = len(pred.labels)
    good = np.full((2, n), 1.0 / n, np.float32)
    pred.check_answer(good, "a test")
    bad = {"NaN": np.where(np.eye(2, n) > 0, np.nan, good), "shape": good[:, :-1],
           "probabilities": good * 3, "negative": good - np.eye(2, n) * 0.5 + np.eye(2, n)[:, ::-1] * 0.5}
    for what, scores in bad.items():
        with pytest.raises(BundleError):
            pred.check_answer(scores, what)


def test_a_reload_never_falls_back_to_the_other_runtime(tmp_path, bundle):
    registry.reset()
    model_dir = tmp_path / "model"
    shutil.copytree(bundle, model_dir)
    first = registry.get_predictor(model_dir, runtime="tflite")
    (model_dir / "model.tflite").write_bytes(b"not a flatbuffer" * 100)
    rejected = []
    assert registry.reload_if_changed(model_dir, runtime="tflite", on_reject=lambda: rejected.append(1)) is None
    assert registry.reload_if_changed(model_dir, runtime="tflite", on_reject=lambda: rejected.append(1)) is None
    assert rejected == [1] and registry.get_predictor(model_dir, runtime="tflite") is first
    registry.reset()
