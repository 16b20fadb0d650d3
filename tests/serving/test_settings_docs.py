"""The one table of serving settings (kws.serving.settings) against what reads or documents it:
docs/settings.md (generated from it), docker-compose.yml's api environment, the api image's ENV,
and the predictor's own constants (issue 20, item 4)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kws.errors import ConfigError
from kws.serving import predictor, runtimes, settings

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "settings.md"


def test_docs_page_is_generated_from_the_table():
    assert DOCS.read_text() == settings.markdown(), (
        "docs/settings.md is stale: run `python -m kws.serving.settings --markdown > docs/settings.md`")
    documented = re.findall(r"^\| `(KWS_[A-Z0-9_]+)` \|", DOCS.read_text(), re.M)
    assert documented == [s.env for s in settings.SETTINGS]


def _compose_env(service: str) -> dict[str, str]:
    raw = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    env = raw["services"][service]["environment"]
    # "${KWS_MAX_UPLOAD_MB:-10}" -> the default compose uses when the variable is unset
    return {k: re.sub(r"^\$\{[A-Z_]+:-(.*)\}$", r"\1", str(v)) for k, v in env.items()}


def test_compose_sets_only_known_settings_with_valid_values():
    env = _compose_env("api")
    unknown = sorted(k for k in env if k.startswith("KWS_") and k not in settings.BY_ENV)
    assert not unknown, f"docker-compose.yml sets {unknown}, which kws.serving.settings does not know"
    cfg = settings.load_config(environ=env)  # every value compose sets is valid
    assert cfg["port"] == int(env["KWS_PORT"]) and cfg["threads"] == int(env["KWS_THREADS"])


def test_the_image_sets_only_known_settings():
    text = (REPO / "serving" / "Dockerfile").read_text()
    names = set(re.findall(r"\b(KWS_[A-Z0-9_]+)=", text))
    assert names and names <= set(settings.BY_ENV), names - set(settings.BY_ENV)


def test_the_table_agrees_with_the_predictor():
    assert settings.RUNTIMES == runtimes.RUNTIMES
    assert settings.DEFAULT_TTA_SHIFTS_MS == tuple(predictor.DEFAULT_TTA_SHIFTS_MS)


def test_every_setting_has_help_and_its_default_passes_its_own_check():
    for s in settings.SETTINGS:
        assert s.env == "KWS_" + s.key.upper() and s.help, s
        assert s.check is None or s.check(s.default) is None, s
    with pytest.raises(ConfigError, match="KWS_MAX_QUEUE must be zero or positive"):
        settings.load_config(environ={"KWS_MAX_QUEUE": "-3"})
