"""MLflow set-up shared by the train, evaluate and promote stages.

Embedded default (no server): runs in ``mlflow.db`` (SQLite) and artifacts in ``mlruns/``
at the project root, which is exactly what ``mlflow ui`` opens when started there.
``MLFLOW_TRACKING_URI`` points everything at a tracking server instead.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

RUN_FILE = "run.json"  # written by train into the model dir: run id handed to later stages


def setup(experiment: str, root: str | Path = ".") -> str:
    """Point MLflow at the configured store and select ``experiment``; returns its id."""
    import mlflow

    root = Path(root).resolve()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = (root / "mlruns").as_uri() if uri.startswith("sqlite:") else None
        mlflow.create_experiment(experiment, artifact_location=location)
    exp = mlflow.set_experiment(experiment)
    log.info("MLflow tracking at %s, experiment %r", uri, experiment)
    return exp.experiment_id


def read_run(model_dir: str | Path) -> dict:
    from kws.errors import KWSError

    path = Path(model_dir) / RUN_FILE
    if not path.is_file():
        raise KWSError(f"{path} not found: run the train stage first")
    return json.loads(path.read_text())
