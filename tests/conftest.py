"""Shared fixtures: the repo and the real Speech Commands clips in ../shared/data (the helpers
themselves are in tests/support/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.paths import REPO, SAMPLE_DIR

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# fixtures of their own modules, for every test that names them
pytest_plugins = ["tests.support.archives"]  # clips, tarball, server (HTTP on 127.0.0.1), no_proxy_for_localhost


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real clips (30 digits + _background_noise_), read in place, never copied into the repo."""
    if not SAMPLE_DIR.is_dir():
        pytest.skip(f"real Speech Commands sample not found at {SAMPLE_DIR}")
    return SAMPLE_DIR
