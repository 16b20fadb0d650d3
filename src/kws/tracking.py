"""MLflow set-up shared by the train, evaluate and promote stages.

Embedded default (no server): runs in ``mlflow.db`` (SQLite) and artifacts in ``mlruns/``
at the project root, which is exactly what ``mlflow ui`` opens when started there.
``MLFLOW_TRACKING_URI`` points everything at a tracking server instead
(``docker compose --profile tracking up -d`` starts one on http://localhost:5000).

A tracking server that does not answer fails the stage in seconds with one line
(:class:`TrackingError`), instead of MLflow's minutes of retries: :func:`setup` probes an
http(s) URI first and lowers MLflow's HTTP retry/timeout defaults (unless they are set).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from kws.errors import KWSError

log = logging.getLogger(__name__)

RUN_FILE = "run.json"  # written by train into the model dir: run id handed to later stages

#: MLflow's HTTP client defaults (7 retries with exponential back-off, 120 s timeout) turn an
#: unreachable server into minutes of waiting; these apply unless the user sets them.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
PROBE_TIMEOUT_S = 4.0
START_HINT = ("start it (`docker compose --profile tracking up -d`) "
              "or unset MLFLOW_TRACKING_URI to use the local store")


class TrackingError(KWSError):
    """The MLflow tracking server is unreachable or refuses the requests."""

    code = "tracking_unavailable"


def probe(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """One GET of ``<uri>/health``, no retries: :class:`TrackingError` when nothing answers.

    Any HTTP answer (even 401/404: a proxy or a server without that route) counts as
    answering; only a refused connection, a timeout or a DNS/TLS failure does not."""
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=(timeout, timeout), allow_redirects=False)
    except requests.RequestException as err:
        raise TrackingError(f"MLflow tracking server at {uri} does not answer ({_reason(err, timeout)}): "
                            f"{START_HINT}") from None


def _reason(err: BaseException, timeout: float) -> str:
    import requests

    if isinstance(err, requests.Timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(err, requests.exceptions.SSLError):
        return "TLS handshake failed"
    for exc in _chain(err):  # the innermost OS error says it best: refused, unreachable, unknown host
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, requests.RequestException):
            return exc.strerror.lower()
    return type(err).__name__


def _chain(err: BaseException):
    """``err`` and what it wraps (causes, contexts, urllib3's ``reason``), depth first."""
    todo, seen = [err], set()
    while todo:
        exc = todo.pop()
        if not isinstance(exc, BaseException) or id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        todo += [exc.__context__, exc.__cause__, getattr(exc, "reason", None), *exc.args[:1]]


def setup(experiment: str, root: str | Path = ".") -> str:
    """Point MLflow at the configured store and select ``experiment``; returns its id."""
    root = Path(root).resolve()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    remote = uri.startswith(("http://", "https://"))
    if remote:
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        probe(uri)  # before importing MLflow (seconds): an absent server fails at once

    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    try:
        if mlflow.get_experiment_by_name(experiment) is None:
            location = (root / "mlruns").as_uri() if uri.startswith("sqlite:") else None
            mlflow.create_experiment(experiment, artifact_location=location)
        exp = mlflow.set_experiment(experiment)
    except MlflowException as err:
        if not remote:
            raise
        first = (str(err.message).strip().splitlines() or ["?"])[0][:300]
        raise TrackingError(f"MLflow tracking server at {uri} answered with an error: {first}") from None
    log.info("MLflow tracking at %s, experiment %r", uri, experiment)
    return exp.experiment_id


def read_run(model_dir: str | Path) -> dict:
    path = Path(model_dir) / RUN_FILE
    if not path.is_file():
        raise KWSError(f"{path} not found: run the train stage first")
    return json.loads(path.read_text())
