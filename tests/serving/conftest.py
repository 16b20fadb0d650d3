"""Fixtures of the serving tests: a small REAL bundle trained on the real clips, the real
Waitress server and the real nginx on free loopback ports (session-wide, torn down at the end)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.bundles import TINY_LABELS, build_tiny_bundle, keyword_clips
from tests.support.nginx import NginxProcess, nginx_or_skip
from tests.support.processes import ApiProcess

LABELS = list(TINY_LABELS)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def sample(sample_dir) -> Path:
    return sample_dir


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, sample) -> Path:
    """A tiny real model (cnn_seed) trained for seconds on the real clips -> complete bundle."""
    out = tmp_path_factory.mktemp("bundle") / "model"
    return build_tiny_bundle(out, sample_dir=sample)


@pytest.fixture(scope="session")
def keras_model(bundle):
    import keras

    return keras.saving.load_model(bundle / "model.keras", compile=False)


@pytest.fixture(scope="session")
def clips(sample) -> dict[str, list[Path]]:
    """Real clip paths of the three keywords of the tiny model."""
    return keyword_clips(sample, LABELS)


@pytest.fixture(scope="session")
def spoken(clips) -> dict[str, Path]:
    """The clip of each keyword that the streaming tests speak: the first, except for "three",
    whose first clip the tiny model (seconds of training) takes for "two" where the CPU's kernels
    train it so (seen on an Intel Xeon, not on AMD EPYC): the streaming tests check the live path,
    the benchmarks check the model."""
    return {w: paths[1 if w == "three" else 0] for w, paths in clips.items()}


@pytest.fixture(scope="session")
def all_clips(sample) -> list[Path]:
    return sorted(p for p in sample.glob("*/*.wav") if not p.parent.name.startswith("_"))


@pytest.fixture(scope="session")
def api(tmp_path_factory, bundle):
    """``python -m kws.serving.server`` (real Waitress) with a private TMPDIR and working directory."""
    work = tmp_path_factory.mktemp("api") / "server"
    # KWS_MAX_QUEUE: room for the 50 requests at once of test_fifty_concurrent_requests (the
    # bound itself is tested in test_overload.py)
    proc = ApiProcess(bundle, work, env={"KWS_MAX_UPLOAD_MB": "10", "KWS_THREADS": "4", "KWS_LOG_LEVEL": "INFO",
                                            "KWS_MAX_QUEUE": "64"})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory, api):
    """Real nginx (the template rendered for loopback) in front of the real Waitress server."""
    nginx_or_skip()
    ngx = NginxProcess(tmp_path_factory.mktemp("nginx"), upstream=f"127.0.0.1:{api.port}",
                          max_upload_mb=api.extra_env["KWS_MAX_UPLOAD_MB"])  # one limit, as in compose
    ngx.start()
    yield ngx
    ngx.stop()


@pytest.fixture(scope="session")
def base(stack) -> str:
    return stack.url
