"""train.steps_per_epoch: null trains whole epochs; an int bounds every epoch to that many steps
and the cosine schedule decays over the bounded steps (a real, tiny training run in a subprocess).
train.unknown_by_word: one training class per unknown word, folded back into ``_unknown_`` in the
exported model."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from kws.config import compose, write_params
from kws.errors import ConfigError
from kws.stages import train as train_stage

from tiny_features import tiny_features_dir  # noqa: E402
from waiting import wait_for  # noqa: E402


def _features_dir(root: Path, **kwargs) -> Path:
    return tiny_features_dir(root, kind="logmel", n_train=96, **kwargs)


def test_bounded_epochs_take_that_many_steps_and_the_cosine_schedule_decays_over_them(tmp_path):
    # 96 examples, batch 8: 12 steps in a whole epoch. The run also trains the unknown words as
    # classes of their own (one tiny run for both: each costs the suite a TensorFlow start-up)
    _features_dir(tmp_path, unknown_words=("bed", "cat"))
    cfg = compose([
        "model=ds_cnn", "model.filters=8", "model.blocks=1",
        "train.epochs=2", "train.batch_size=8", "train.lr_schedule=cosine", "train.learning_rate=0.002",
        "train.steps_per_epoch=3", "train.early_stopping_patience=5", "train.unknown_by_word=true",
        f"paths.features={tmp_path / 'features'}", f"paths.model={tmp_path / 'model'}",
        f"paths.reports={tmp_path / 'reports'}",
    ])
    write_params(cfg, tmp_path / "params.yaml")
    env = {**os.environ, "KWS_LOG_LEVEL": "INFO", "TF_CPP_MIN_LOG_LEVEL": "2",
           "MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the local store in tmp_path/mlflow.db
    proc = subprocess.run([sys.executable, "-m", "kws.stages.train", "--params", str(tmp_path / "params.yaml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "train.steps_per_epoch=3: 3 of the 12 steps of a whole epoch per epoch" in out, out[-4000:]
    # the progress bar counts every step of the run (2 epochs x 3), the epoch lines give the time left
    assert "6/6" in out and "/24" not in out, out[-4000:]
    assert "epoch 1/2: loss" in out and "epoch 2/2: loss" in out and "left)" in out, out[-4000:]

    info = json.loads((tmp_path / "model" / "model_info.json").read_text())
    assert info["training"]["steps_per_epoch"] == 3
    # unknown_by_word: a 6-class training head (4 labels + bed, cat), a 4-label exported model
    assert "train.unknown_by_word: 2 unknown words trained as classes of their own" in out, out[-4000:]
    assert info["training"]["unknown_words"] == ["bed", "cat"]
    assert json.loads((tmp_path / "model" / "labels.json").read_text())["labels"] == ["_unknown_", "yes", "no", "up"]
    _assert_folded_like_keras(tmp_path / "model")
    with open(tmp_path / "reports" / "train" / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    # The saved model (a zip: config.json + weights) holds the optimizer: its cosine schedule was
    # built for 2 x 3 steps (one epoch of warm-up, then the decay), and it took exactly 6 steps.
    with zipfile.ZipFile(tmp_path / "model" / "model.keras") as z:
        schedule = json.loads(z.read("config.json"))["compile_config"]["optimizer"]["config"]["learning_rate"]
        weights = z.read("model.weights.h5")
    assert schedule["class_name"] == "CosineDecay"
    assert (schedule["config"]["warmup_steps"], schedule["config"]["decay_steps"]) == (3, 3)
    import h5py

    with h5py.File(io.BytesIO(weights)) as h5:
        assert int(h5["optimizer/vars/0"][()]) == 6  # the optimizer's iteration counter


def _assert_folded_like_keras(bundle: Path) -> None:
    """The bundle's Keras model and its TFLite copy give the same 4 scores, summing to 1, and the
    fold layer is the fixed 0/1 matrix (yes/no/up to themselves, bed and cat to _unknown_)."""
    import keras
    import numpy as np

    from kws.serving.predictor import TFLiteRuntime

    model = keras.models.load_model(bundle / "model.keras", compile=False)
    fold = model.get_layer("unknown_words_to_unknown").get_weights()[0]
    np.testing.assert_array_equal(fold, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1],
                                         [1, 0, 0, 0], [1, 0, 0, 0]])
    with np.load(bundle.parent / "features" / "validation.npz") as d:
        x = d["x"][:8, ..., None]
    scores = model.predict(x, verbose=0)
    assert scores.shape == (8, 4)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(TFLiteRuntime(bundle / "model.tflite").infer(x), scores, atol=1e-5)


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
