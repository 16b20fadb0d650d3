"""train.steps_per_epoch (its validation; the bounded run itself is trained in
tests/test_distribute.py, together with the mirrored strategy), train.unknown_by_word's targets
and fold matrix, and a SIGTERM during training (a real, tiny training run in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from kws.config import compose, write_params
from kws.errors import ConfigError
from kws.stages import train as train_stage

from tiny_features import tiny_features_dir  # noqa: E402
from waiting import wait_for  # noqa: E402


def _features_dir(root: Path) -> Path:
    return tiny_features_dir(root, kind="logmel", n_train=96)


def test_word_targets_give_each_unknown_word_a_class_and_keep_the_rest():
    import numpy as np

    labels = ["_silence_", "_unknown_", "yes"]
    y = np.array([1, 2, 1, 0, 1])
    files = np.array(["dog/a.wav", "yes/b.wav", "bed/c.wav", "_silence_", "dog/d.wav"])
    targets, words = train_stage.word_targets(y, files, labels)
    assert words == ["bed", "dog"] and targets.tolist() == [4, 2, 3, 0, 4]
    # validation: the training vocabulary; a word it lacks stays _unknown_
    targets, _ = train_stage.word_targets(np.array([1, 1]), np.array(["cat/e.wav", "bed/f.wav"]), labels, words)
    assert targets.tolist() == [1, 3]
    assert train_stage.word_targets(np.array([0, 1]), np.array(["_silence_", "yes/g.wav"]), ["_silence_", "yes"]) \
        == (pytest.approx([0, 1]), [])
    fold = train_stage.fold_matrix(labels, words)
    assert fold.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0], [0, 1, 0]]


@pytest.mark.parametrize("value", [0, -3, 2.5, "many", True])
def test_invalid_steps_per_epoch_is_a_config_error(value):
    with pytest.raises(ConfigError, match="train.steps_per_epoch"):
        train_stage.bounded_steps(SimpleNamespace(get=lambda key, default=None: value), 10)


def test_null_or_a_larger_bound_is_the_whole_epoch():
    get = lambda v: SimpleNamespace(get=lambda key, default=None: v)  # noqa: E731
    assert train_stage.bounded_steps(get(None), 12) == 12
    assert train_stage.bounded_steps(get(50), 12) == 12
    assert train_stage.bounded_steps(get(5), 12) == 5


def test_sigterm_during_training_ends_the_mlflow_run_as_killed_and_writes_no_model(tmp_path):
    """`kill` mid-training: exit 143 after clean-up, the MLflow run is KILLED (never left RUNNING),
    no model folder appears."""
    import signal

    from mlflow.tracking import MlflowClient

    _features_dir(tmp_path)
    cfg = compose([
        "model=ds_cnn", "model.filters=8", "model.blocks=1", "train.epochs=500", "train.batch_size=8",
        "train.early_stopping_patience=500",
        f"paths.features={tmp_path / 'features'}", f"paths.model={tmp_path / 'model'}",
        f"paths.reports={tmp_path / 'reports'}",
    ])
    write_params(cfg, tmp_path / "params.yaml")
    env = {**os.environ, "KWS_LOG_LEVEL": "INFO", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log_file = tmp_path / "stderr.txt"
    with open(log_file, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "kws.stages.train", "--params", str(tmp_path / "params.yaml")],
                                cwd=tmp_path, env=env, stdout=err, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "epoch 2/500:" in log_file.read_text(), 120, "the second epoch", proc)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log_file.read_text()
    assert rc == 143, out[-3000:]
    assert "Traceback" not in out and "ended as KILLED" in out, out[-3000:]
    assert not (tmp_path / "model").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["KILLED"]
