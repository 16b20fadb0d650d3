"""docker-compose.yml as the tests read it: the file, compose's ``${VAR:-default}`` with its
defaults, a command's ``--name=value`` flags."""

from __future__ import annotations

import re

import yaml

from tests.support.paths import REPO


def interpolate(value: str) -> str:
    """docker compose's ``${VAR:-default}`` with the defaults (the environment is ignored)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def compose_file() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    assert len(values) == 1, f"{name}=… once in {args}"
    return values[0]
