"""Where things are: the checkout, and the shared real data beside it (read in place, never copied)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: The shared folder beside the checkout: real clips and baselines too big (and not ours) to commit.
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
#: 30 real digit clips + ``_background_noise_``: what the tiny bundles are trained on.
SAMPLE_DIR = DATA / "speech_commands_sample"
REAL_DIR = DATA / "speech_commands_real"
REAL_SILENCE_DIR = DATA / "speech_commands_real_silence"
BASELINES = SHARED / "baselines"
NGINX_DIR = REPO / "nginx"
