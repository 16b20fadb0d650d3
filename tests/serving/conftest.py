"""Fixtures of the serving tests: a small REAL bundle trained on the real clips, the real
Waitress server and the real nginx on free loopback ports (session-wide, torn down at the end)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kws.serving import testing as kt
from serving_helpers import nginx_or_skip

REPO = Path(__file__).resolve().parents[2]
SAMPLE = Path(__file__).resolve().parents[2].parent / "shared/data/speech_commands_sample"
LABELS = list(kt.TINY_LABELS)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _sample_or_skip() -> Path:
    if not SAMPLE.is_dir():
        pytest.skip(f"real Speech Commands sample not found at {SAMPLE}")
    return SAMPLE


@pytest.fixture(scope="session")
def sample() -> Path:
    return _sample_or_skip()


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, sample) -> Path:
    """A tiny real model (cnn_seed) trained for seconds on the real clips -> complete bundle."""
    out = tmp_path_factory.mktemp("bundle") / "model"
    return kt.build_tiny_bundle(out, sample_dir=sample)


@pytest.fixture(scope="session")
def keras_model(bundle):
    import keras

    return keras.saving.load_model(bundle / "model.keras", compile=False)


@pytest.fixture(scope="session")
def clips(sample) -> dict[str, list[Path]]:
    """Real clip paths of the three keywords of the tiny model."""
    return kt.keyword_clips(sample, LABELS)


@pytest.fixture(scope="session")
def all_clips(sample) -> list[Path]:
    return sorted(p for p in sample.glob("*/*.wav") if not p.parent.name.startswith("_"))


@pytest.fixture(scope="session")
def api(tmp_path_factory, bundle):
    """``python -m kws.serving.server`` (real Waitress) with a private TMPDIR and working directory."""
    work = tmp_path_factory.mktemp("api") / "server"
    # KWS_MAX_QUEUE: room for the 50 requests at once of test_fifty_concurrent_requests (the
    # bound itself is tested in test_overload.py)
    proc = kt.ApiProcess(bundle, work, env={"KWS_MAX_UPLOAD_MB": "10", "KWS_THREADS": "4", "KWS_LOG_LEVEL": "INFO",
                                            "KWS_MAX_QUEUE": "64"})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory, api):
    """Real nginx (the template rendered for loopback) in front of the real Waitress server."""
    nginx_or_skip()
    ngx = kt.NginxProcess(tmp_path_factory.mktemp("nginx"), upstream=f"127.0.0.1:{api.port}",
                          max_upload_mb=api.extra_env["KWS_MAX_UPLOAD_MB"])  # one limit, as in compose
    ngx.start()
    yield ngx
    ngx.stop()


@pytest.fixture(scope="session")
def base(stack) -> str:
    return stack.url
