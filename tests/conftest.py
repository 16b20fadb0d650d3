"""Shared fixtures: paths to the repo and to the real Speech Commands clips in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "speech_commands_sample"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real clips (30 digits + _background_noise_), read in place, never copied into the repo."""
    if not SAMPLE.is_dir():
        pytest.skip(f"real Speech Commands sample not found at {SAMPLE}")
    return SAMPLE
