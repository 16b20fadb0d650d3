"""Requests to the service and checks of its answers (the serving tests; their fixtures are in
``tests/serving/conftest.py``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import requests


def post_audio(url: str, data: bytes, filename: str = "clip.wav", params: dict | None = None,
               timeout: float = 60, **kw) -> requests.Response:
    return requests.post(f"{url}/predict", files={"file": (filename, data)}, params=params or {}, timeout=timeout, **kw)


def assert_error(resp: requests.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, f"expected {status} {code}, got {resp.status_code}: {resp.text[:500]}"
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in resp.text and "<html" not in resp.text.lower()
    return body


def ffmpeg_convert(src: Path, dst: Path, *args: str) -> Path:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg is not installed")
    subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(src), *args, str(dst)],
                   check=True, capture_output=True, timeout=60)
    return dst


def offline_scores(keras_model, samples: np.ndarray, cfg, shifts_ms=None) -> np.ndarray:
    """What the training side computes: clip_features + model.predict, averaged over the service's
    test-time shifts of the clip (``shifts_ms``; default: the service's)."""
    from kws.audio import fix_length, time_shift
    from kws.features import clip_features
    from kws.serving.predictor import DEFAULT_TTA_SHIFTS_MS

    clip = fix_length(np.asarray(samples, np.float32), cfg.clip_samples)
    shifts = DEFAULT_TTA_SHIFTS_MS if shifts_ms is None else shifts_ms
    x = np.stack([clip_features(time_shift(clip, int(round(ms * cfg.sample_rate / 1000))), cfg) for ms in shifts])
    return keras_model.predict(x[..., None], verbose=0).mean(axis=0)


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return 0.0


def tree(path: Path) -> set[str]:
    """Every file and folder under ``path`` (relative names)."""
    path = Path(path)
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


@contextmanager
def decoders_taken(app) -> Iterator[None]:
    """Inside: a thread holds the app's one ffmpeg decoder slot (``ffmpeg_concurrency: 1``), so
    an upload that needs ffmpeg finds none free; released on the way out."""
    hold, release = threading.Event(), threading.Event()

    def occupy():
        with app.extensions["kws_decoder"].gate.slot():
            hold.set()
            release.wait(30)

    holder = threading.Thread(target=occupy)
    holder.start()
    try:
        assert hold.wait(10), "the decoder slot was not taken"
        yield
    finally:
        release.set()
        holder.join()


class CountingRuntime:
    """A predictor's real runtime, recording the shape of every batch it is given."""

    def __init__(self, runtime):
        self.inner, self.calls = runtime, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def infer(self, x):
        self.calls.append(x.shape)
        return self.inner.infer(x)
