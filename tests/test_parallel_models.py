"""trainer.parallel_models and trainer.threads (kws.training.members): a seed ensemble's models
trained side by side, each in a spawned process of its own, are the models trained one after
another; a worker that dies, or a SIGTERM to the stage, ends the stage cleanly with no worker
left behind. Real, tiny training runs through the stage's own command, in fresh processes (the
thread count is fixed when TensorFlow starts, and this process's may have started already)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from kws.config import compose, write_params
from kws.errors import ConfigError
from kws.training import members, settings

from tests.support.features import tiny_features_dir

TINY = ["model=ds_cnn", "model.filters=8", "model.blocks=1", "train.epochs=3", "train.batch_size=8",
        "train.learning_rate=0.05", "train.keep_weights=last", "train.ensemble_seeds=[7]"]
#: the figures of a run that are clock readings, not what it learned
TIMINGS = ("train_seconds", "seconds_per_epoch")


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("parallel_models")
    tiny_features_dir(root, kind="logmel", n_train=96)
    return root / "features"


def _params(features: Path, run: Path, *overrides: str) -> Path:
    run.mkdir(parents=True)
    cfg = compose([*TINY, *overrides, f"paths.features={features}", f"paths.model={run / 'model'}",
                   f"paths.reports={run / 'reports'}"])
    write_params(cfg, run / "params.yaml")
    return run / "params.yaml"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the embedded store, in the run's folder
    return env | {"KWS_LOG_LEVEL": "INFO"}


def _train(features: Path, run: Path, *overrides: str) -> subprocess.CompletedProcess:
    params = _params(features, run, *overrides)
    return subprocess.run([sys.executable, "-m", "kws.stages.train", "--params", str(params)], cwd=run, env=_env(),
                          capture_output=True, text=True, timeout=600)


def _runs(run: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_models_trained_side_by_side_are_the_models_trained_one_after_another(features, tmp_path):
    import keras
    import numpy as np

    one, two = (_train(features, tmp_path / name, f"trainer.parallel_models={n}") for name, n in (("one", 1), ("two", 2)))
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-3000:], two.stderr[-3000:])
    assert "training 2 models 2 at a time" in two.stderr and "at a time" not in one.stderr
    assert "train (2 at a time): 100%" in two.stderr  # one bar over both models' epochs
    assert "Traceback" not in two.stderr
    a, b = (keras.models.load_model(tmp_path / name / "model" / "model.keras").get_weights() for name in ("one", "two"))
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert (tmp_path / "one" / "reports" / "train" / "history.csv").read_text() == \
        (tmp_path / "two" / "reports" / "train" / "history.csv").read_text()
    # the same MLflow record: every metric (the second member's per-epoch ones too), clock readings aside
    (run_one,), (run_two,) = _runs(tmp_path / "one"), _runs(tmp_path / "two")
    m1, m2 = ({k: v for k, v in r.data.metrics.items() if not k.endswith(TIMINGS)} for r in (run_one, run_two))
    assert {"member1_val_accuracy", "member1_best_val_accuracy", "ensemble_val_accuracy"} <= set(m1)
    assert m1 == m2
    assert run_two.info.status == "FINISHED"
    info = json.loads((tmp_path / "two" / "model" / "model_info.json").read_text())
    assert info["training"]["threads"] == 1 and info["training"]["seeds"] == [42, 7]


def _workers(pid: int) -> list:
    """The training workers of the stage ``pid`` (multiprocessing's resource tracker aside)."""
    import psutil

    return [p for p in psutil.Process(pid).children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]


def _start_long_run(features: Path, run: Path):
    """A run of 500 epochs with two workers, once both have logged their first epoch."""
    params = _params(features, run, "trainer.parallel_models=2", "train.epochs=500", "train.early_stopping_patience=500")
    log = open(run / "stderr.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "kws.stages.train", "--params", str(params)], cwd=run, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 300
    while (run / "stderr.log").read_text().count("epoch 1/500") < 2:
        assert proc.poll() is None and time.monotonic() < deadline, (run / "stderr.log").read_text()[-3000:]
        time.sleep(0.5)
    workers = _workers(proc.pid)
    assert len(workers) == 2
    return proc, workers


def _gone(workers: list) -> bool:
    import psutil

    return not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_a_worker_killed_outright_fails_the_stage_with_its_cause_and_stops_the_other(features, tmp_path):
    """As the kernel's OOM killer would: SIGKILL to one worker. The stage ends at once (not after the
    other's 500 epochs), says how the worker ended and what to do, writes no model."""
    run = tmp_path / "run"
    proc, workers = _start_long_run(features, run)
    workers[0].kill()
    rc = proc.wait(timeout=120)
    err = (run / "stderr.log").read_text()
    assert rc == 1, err[-3000:]
    assert "ended with exit code -9" in err and "trainer.parallel_models=1" in err, err[-3000:]
    assert "Traceback" not in err
    assert _gone(workers)
    assert not (run / "model").exists()
    assert [r.info.status for r in _runs(run)] == ["FAILED"]


def test_sigterm_to_the_stage_stops_its_workers_and_ends_the_run_as_killed(features, tmp_path):
    run = tmp_path / "run"
    proc, workers = _start_long_run(features, run)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    err = (run / "stderr.log").read_text()
    assert rc == 143, err[-3000:]
    assert "terminated (SIGTERM): cleaned up, outputs unchanged" in err and "Traceback" not in err, err[-3000:]
    assert _gone(workers)
    assert not (run / "model").exists()
    assert [r.info.status for r in _runs(run)] == ["KILLED"]


@pytest.mark.parametrize("overrides, message", [
    (["trainer.parallel_models=0"], "trainer.parallel_models must be auto or a positive integer"),
    (["trainer.parallel_models=many"], "trainer.parallel_models must be auto or a positive integer"),
    (["trainer=mirrored", "trainer.parallel_models=2"], "which trainer.distribute=mirrored cannot"),
    (["trainer.threads=0"], "trainer.threads must be a positive integer or null"),
    (["trainer.threads=true"], "trainer.threads must be a positive integer or null"),
])
def test_invalid_trainer_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        settings.check(compose([*TINY, *overrides]))


def test_auto_trains_one_model_per_threads_of_the_usable_cores_as_memory_allows(features, monkeypatch):
    """auto: one model per core at one thread each, one at a time with a GPU or every core per
    model, and no more than the available memory holds."""
    cores = len(os.sched_getaffinity(0))

    def processes(seeds: int, parallel, threads, gpus=()) -> int:
        checked = SimpleNamespace(parallel_models=parallel, threads=threads, seeds=list(range(seeds)))
        return members.processes(SimpleNamespace(checked=checked, devices=SimpleNamespace(gpus=list(gpus)),
                                                 features_dir=features))

    monkeypatch.setattr(members, "available_memory", lambda: 64 * 10**9)
    assert processes(16, None, 1) == min(16, cores)
    assert processes(3, None, None) == 1  # every core for each model: one at a time
    assert processes(3, None, 1, gpus=["GPU:0"]) == 1
    assert processes(3, 2, 1) == 2 and processes(1, 4, 1) == 1  # never more than the models
    monkeypatch.setattr(members, "available_memory", lambda: members.WORKER_BASE_BYTES + 10**6)
    assert processes(16, None, 1) == 1  # room for one worker
    assert processes(3, 2, 1) == 2  # a number given is a number kept
    assert settings.parallel_models(compose(TINY), "none") is None  # conf/trainer/cpu.yaml: auto
    assert settings.parallel_models(compose([*TINY, "trainer=gpu"]), "none") == 1
