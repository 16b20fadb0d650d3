"""The MLflow tracking server, for real: a throw-away PostgreSQL (Debian's binaries) as the
backend store, ``mlflow server`` (the venv's, with docker-compose.yml's own arguments) serving the
artifacts, and a real ``dvc repro`` of the whole pipeline (tiny synthetic data, one epoch) logging,
registering and promoting through it; the service then loads the champion the server names.

Also here: a tracking server that does not answer fails in seconds with one line; ``dvc plots
show`` works offline. The tracking profile of docker-compose.yml, its image, and ``scripts/setup.sh``
(PostgreSQL installed, apt/dpkg locks waited for): ``test_tracking_deploy.py``."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from kws.bundle import read_meta
from kws.config import compose
from tests.support.compose import compose_file, flag, interpolate
from tests.support.paths import REPO
from tests.support.processes import free_port as _free_port
from tests.support.workspace import copy_pipeline

BIN = Path(sys.executable).parent
STAGES = ("download", "prepare", "train", "evaluate", "promote")
UP = "docker compose --profile tracking up -d"


# --------------------------------------------------------------------------- helpers
def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{BIN}:{env['PATH']}"  # `python` in dvc.yaml = this venv
    env["KWS_LOG_LEVEL"] = "INFO"
    env.update(extra)
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


# --------------------------------------------------------------------------- PostgreSQL + mlflow server
def _postgres_bin() -> Path:
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    pytest.skip("PostgreSQL binaries not found in /usr/lib/postgresql/*/bin (apt-get install postgresql)")


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster in a temp dir, on 127.0.0.1 and a free port, with a `mlflow` database.
    initdb refuses root: as root, the cluster belongs to (and runs as) the `postgres` user."""
    bindir = _postgres_bin()
    try:
        import psycopg2
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install psycopg2-binary, in the dev extra)")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="kws-pg-", dir="/tmp"))  # not under pytest's root-only tmp
    if os.geteuid() == 0:
        import pwd

        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            pytest.skip("running as root and there is no `postgres` user to run initdb as")
        os.chown(base, pg.pw_uid, pg.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", _free_port()

    def pg(*cmd: str, timeout: float = 120) -> None:
        res = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=timeout, cwd=base)
        assert res.returncode == 0, f"{cmd[0]} failed:\n{res.stdout}\n{res.stderr}"

    started = False
    try:
        pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
           "--locale=C", "--no-sync")
        opts = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={base} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "postgres.log"), "-o", opts, "-w", "-t", "60",
           "start")
        started = True
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        yield {"uri": f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow", "port": port}
    finally:
        if started:
            pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def _sql(postgres, query: str, *params) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=postgres["port"], user="postgres", dbname="mlflow")
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()
    finally:
        conn.close()


def _server_command(backend: str, port: int, artifacts: Path) -> list[str]:
    """The `mlflow` service's command of docker-compose.yml, bound to this test's addresses."""
    cmd = [interpolate(str(a)) for a in compose_file()["services"]["mlflow"]["command"]]
    assert cmd[:2] == ["mlflow", "server"], cmd
    local = {"--host": "127.0.0.1", "--port": str(port), "--backend-store-uri": backend,
             "--artifacts-destination": str(artifacts), "--workers": "1"}  # 1 worker: 2 CPU cores here
    for name in local:
        flag(cmd, name)  # each one is in the compose command ...
    return [str(BIN / "mlflow"), "server",  # ... and replaced here; every other flag as compose gives it
            *(f"{a.split('=', 1)[0]}={local[a.split('=', 1)[0]]}" if a.split("=", 1)[0] in local else a
              for a in cmd[2:])]


class _Server:
    """``mlflow server`` started in the background (its start, schema migrations included, takes
    ~30 s: the data stages run meanwhile); :meth:`ready` waits for ``/health``."""

    def __init__(self, postgres, base: Path):
        self.port, self.artifacts, self.log = _free_port(), base / "mlartifacts", base / "server.log"
        self.uri = f"http://127.0.0.1:{self.port}"
        self.cmd = _server_command(postgres["uri"], self.port, self.artifacts)
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(self.cmd, cwd=base, env=_env(), stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # uvicorn runs in a child: stop the group

    def ready(self) -> "_Server":
        from tests.support.processes import wait_http

        wait_http(f"{self.uri}/health", timeout=240, proc=self.proc, log=self.log)
        return self

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):  # keep-alive clients: no long grace
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    srv = _Server(postgres, tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield srv
    finally:
        srv.stop()


# --------------------------------------------------------------------------- the pipeline through the server
def _overrides(sample_dir: Path) -> list[str]:
    return [  # as small and fast as the pipeline allows: 4 voices x 1 take of 35 words, one epoch
        "data=synthetic",
        "synthetic.voices=4", "synthetic.takes_per_voice=1",
        "synthetic.validation_voices=1", "synthetic.testing_voices=1",
        f"synthetic.noise_dir={sample_dir / '_background_noise_'}",
        "prepare.augment.copies=0", "features=mfcc", "model=cnn_seed",
        "train.epochs=1", "train.batch_size=32", "train.lr_schedule=plateau", "train.ensemble_seeds=[]",
    ]


@pytest.fixture(scope="module")
def project(tmp_path_factory, sample_dir) -> Path:
    """A temporary copy of the project (as tests/test_pipeline.py builds it), its own git repo."""
    return copy_pipeline(REPO, tmp_path_factory.mktemp("kws-tracked"),
                         compose(_overrides(sample_dir), conf_dir=REPO / "conf"))


@pytest.fixture(scope="module")
def tracked_repro(project, server):
    """`MLFLOW_TRACKING_URI=<server> dvc repro`, as the README says (the data stages, which do
    not use MLflow, first: while the server starts)."""
    started = time.monotonic()
    out = ""
    for target, uri in ((["prepare"], "http://127.0.0.1:9"), ([], server.uri)):  # prepare must not need it
        if not target:
            server.ready()
        proc = _run([sys.executable, "-m", "dvc", "repro", *target], project, MLFLOW_TRACKING_URI=uri)
        out += proc.stdout + proc.stderr
    return {"ran": [s for s in STAGES for _ in range(out.count(f"Running stage '{s}'"))], "out": out,
            "seconds": time.monotonic() - started}


@pytest.mark.slow
def test_pipeline_logs_registers_and_promotes_through_the_server(project, server, postgres, tracked_repro,
                                                                 tmp_path):
    from mlflow import MlflowClient

    assert tracked_repro["ran"] == list(STAGES), tracked_repro["out"][-3000:]  # each stage once
    assert f"MLflow tracking at {server.uri}" in tracked_repro["out"]
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()  # nothing local

    # The run is in the server's experiment, with the pipeline's parameters and metrics.
    client = MlflowClient(tracking_uri=server.uri)
    run_id = json.loads((project / "data/model/run.json").read_text())["run_id"]
    experiment = client.get_experiment_by_name("kws")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    metrics = json.loads((project / "reports/evaluate/metrics.json").read_text())["test"]
    assert run.data.params["data.source"] == "synthetic" and run.data.params["train.epochs"] == "1"
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])

    # Registered with the `champion` alias, in the server's registry ...
    champion = client.get_model_version_by_alias("kws", "champion")
    assert champion.run_id == run_id and champion.version == "1"
    promotion = json.loads((project / "reports/promotion.json").read_text())
    assert promotion["promoted"] and promotion["champion_run_id"] == run_id
    # ... which is PostgreSQL's tables.
    assert _sql(postgres, "SELECT name FROM registered_models") == [("kws",)]
    assert _sql(postgres, "SELECT alias, version FROM registered_model_aliases WHERE name = 'kws'") == [("champion", 1)]
    assert _sql(postgres, "SELECT run_id FROM model_versions WHERE name = 'kws' AND version = 1") == [(run_id,)]
    assert _sql(postgres, "SELECT status FROM runs WHERE run_uuid = %s", run_id) == [("FINISHED",)]
    # The artifacts went through the server (--serve-artifacts) into its destination.
    logged = {p.relative_to(server.artifacts).as_posix() for p in server.artifacts.rglob("*") if p.is_file()}
    assert f"{experiment.experiment_id}/{run_id}/artifacts/bundle/model_info.json" in logged, sorted(logged)[:40]

    # The bundle promote exported is the champion's, downloaded back from the server.
    bundle = read_meta(project / "serving/model")
    assert bundle.info["run_id"] == run_id and bundle.info["version"] == champion.version
    assert bundle.info["alias"] == "champion"

    # ... and the service loads exactly that champion.
    import requests

    from tests.support.processes import ApiProcess

    with ApiProcess(project / "serving/model", tmp_path / "api") as api:
        served = requests.get(f"{api.url}/model", timeout=10).json()
    assert served["model_info"]["run_id"] == run_id, served
    assert served["model_info"]["version"] == champion.version and served["model_info"]["alias"] == "champion"


@pytest.mark.slow
def test_dvc_plots_show_is_offline_and_draws_each_figure_once(project, tracked_repro):
    """`dvc plots show` after a real run: the stages' PNGs, once each, as <img> from dvc_plots/;
    no script from a CDN (a blank page offline); dvc_plots/ is git-ignored."""
    _run([sys.executable, "-m", "dvc", "plots", "show"], project)
    index = project / "dvc_plots" / "index.html"

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags: list[tuple[str, dict]] = []

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))

    parser = Tags()
    parser.feed(index.read_text())
    urls = [v for _, attrs in parser.tags for k, v in attrs.items() if k in ("src", "href") and v]
    assert not [u for u in urls if re.match(r"(https?:)?//", u)], urls
    assert [t for t, _ in parser.tags if t == "script"] == []
    images = [attrs["src"] for tag, attrs in parser.tags if tag == "img"]
    assert sorted(images) == ["static/workspace_reports_evaluate_confusion_matrix.png",
                              "static/workspace_reports_stream_det.png",
                              "static/workspace_reports_train_training_curves.png"], images
    for src in images:
        assert (index.parent / src).stat().st_size > 1000
    listed = json.loads(_run([sys.executable, "-m", "dvc", "plots", "show", "--json"], project).stdout)["data"]
    assert sorted(listed) == ["reports/evaluate/confusion_matrix.png", "reports/stream/det.png",
                              "reports/train/training_curves.png"]
    ignored = subprocess.run(["git", "check-ignore", "-q", "dvc_plots/index.html"], cwd=project)
    assert ignored.returncode == 0, "dvc_plots/ is not in .gitignore"


# --------------------------------------------------------------------------- a server that does not answer
def _closed_url() -> str:
    return f"http://127.0.0.1:{_free_port()}"  # free: nothing listens there


def _assert_one_clear_line(proc: subprocess.CompletedProcess, uri: str, seconds: float) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert seconds < 15, f"took {seconds:.1f} s"
    assert "Traceback" not in proc.stderr and "Retry" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert errors[0] == (f"error: MLflow tracking server at {uri} does not answer (connection refused): "
                         f"start it (`{UP}`) or unset MLFLOW_TRACKING_URI to use the local store")
    # and nothing else that says it (no logged copy, no chained errors)
    others = [line for line in proc.stderr.splitlines() if line.strip() and line not in errors]
    assert not any("does not answer" in line for line in others), others


def test_unreachable_tracking_server_fails_in_seconds_with_one_line(tmp_path):
    uri = _closed_url()
    code = ("from kws.cli import run_cli\nfrom kws import tracking\n"
            "raise SystemExit(run_cli(lambda: tracking.setup('kws')))")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(MLFLOW_TRACKING_URI=uri),
                          capture_output=True, text=True, timeout=120)
    _assert_one_clear_line(proc, uri, time.monotonic() - started)
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_stage_with_an_unreachable_server_fails_in_seconds(project, tracked_repro):
    """The promote stage of the tracked project, the server gone: one line, seconds."""
    uri = _closed_url()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "kws.stages.promote"], cwd=project,
                          env=_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True, timeout=120)
    _assert_one_clear_line(proc, uri, time.monotonic() - started)


def test_http_retry_defaults_are_small_unless_set(monkeypatch, tmp_path):
    from kws import tracking

    names = list(tracking.HTTP_DEFAULTS)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _closed_url())
    for name in names:
        monkeypatch.delenv(name, raising=False)  # restored (removed) after the test
    with pytest.raises(tracking.TrackingError, match="does not answer"):
        tracking.setup("kws", root=tmp_path)
    assert [os.environ[n] for n in names] == [tracking.HTTP_DEFAULTS[n] for n in names]
    assert int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) <= 3
    assert int(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]) <= 60
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    with pytest.raises(tracking.TrackingError):
        tracking.setup("kws", root=tmp_path)
    assert [os.environ[n] for n in names] == ["5", "300"]  # the user's settings win


def test_a_server_that_answers_with_errors_is_one_line_too(monkeypatch, tmp_path):
    """E.g. MLflow 3 refusing a Host header it does not know (--allowed-hosts): 403, not a traceback."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from kws import tracking

    class Refuse(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"Invalid Host header - possible DNS rebinding attack detected"
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        with pytest.raises(tracking.TrackingError) as err:
            tracking.setup("kws", root=tmp_path)
    finally:
        httpd.shutdown()
        httpd.server_close()
    message = err.value.message
    assert message.startswith(f"MLflow tracking server at {uri} answered with an error: ") and "\n" not in message
    assert "403" in message and "Invalid Host header" in message, message
