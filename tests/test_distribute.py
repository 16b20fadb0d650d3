"""trainer.distribute / trainer.mixed_precision (the conf/trainer/ group): MirroredStrategy for real on two logical CPUs
(``KWS_CPU_DEVICES=2``, in a subprocess: the split must precede TensorFlow's device set-up),
a clear error for an invalid strategy, the chief rule of multi-worker training, and (opt-in,
``KWS_TEST_MULTI_WORKER=1``) two real MultiWorkerMirroredStrategy workers on localhost."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from kws.config import compose, write_params
from kws.errors import ConfigError
from kws.stages import train as train_stage
from kws.training import distribute

from tests.support.features import LABELS, tiny_features_dir


def _features_dir(root: Path) -> Path:
    return tiny_features_dir(root, kind="mfcc", n_train=48)


def _params(root: Path, *overrides: str) -> Path:
    cfg = compose([
        "model=ds_cnn", "model.filters=8", "model.blocks=1",
        "train.epochs=2", "train.batch_size=8", "train.lr_schedule=plateau", "train.early_stopping_patience=2",
        "train.ensemble_seeds=[]",
        f"paths.features={root / 'features'}", f"paths.model={root / 'model'}", f"paths.reports={root / 'reports'}",
        *overrides,
    ])
    return write_params(cfg, root / "params.yaml")


def _run_train(root: Path, wait: bool = True, **env: str):
    full = {**os.environ, "KWS_LOG_LEVEL": "INFO", "TF_CPP_MIN_LOG_LEVEL": "2",
            # MLflow would load the model again in a subprocess to infer its pip requirements (~15 s)
            "MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT": "1", **env}
    full.pop("MLFLOW_TRACKING_URI", None)  # the local store in root/mlflow.db
    cmd = [sys.executable, "-m", "kws.stages.train", "--params", str(root / "params.yaml")]
    if not wait:
        return subprocess.Popen(cmd, cwd=root, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=root, env=full, capture_output=True, text=True, timeout=300)


def test_mirrored_on_two_logical_cpus_bounded_epochs_and_unknown_words_in_one_run(tmp_path):
    """One tiny real training run (each costs the suite a TensorFlow start-up) for three options:
    trainer=mirrored on 2 logical CPUs (mixed precision asked for without a GPU: a
    warning, float32); train.steps_per_epoch=3 of a whole epoch's 6, with the cosine schedule
    built over the 2 x 3 bounded steps; train.unknown_by_word (a 6-class training head: 4 labels
    + bed, cat; a 4-label exported model)."""
    tiny_features_dir(tmp_path, kind="logmel", n_train=96, unknown_words=("bed", "cat"))
    _params(tmp_path, "trainer=mirrored", "trainer.mixed_precision=true", "train.lr_schedule=cosine",
            "train.learning_rate=0.002", "train.steps_per_epoch=3", "train.early_stopping_patience=5",
            "train.unknown_by_word=true", "features=logmel")
    proc = _run_train(tmp_path, KWS_CPU_DEVICES="2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "MirroredStrategy with 2 replica(s) in sync" in out, out[-4000:]
    assert "global batch 16 (8 per replica)" in out
    assert "TensorFlow sees no GPU: training in float32" in out
    assert "train.steps_per_epoch=3: 3 of the 6 steps of a whole epoch per epoch" in out, out[-4000:]
    # the progress bar counts every step of the run (2 epochs x 3), the epoch lines give the time left
    assert "6/6 [" in out and "/12 [" not in out, out[-4000:]
    assert "epoch 1/2: loss" in out and "epoch 2/2: loss" in out and "left)" in out, out[-4000:]
    assert "train.unknown_by_word: 2 unknown words trained as classes of their own" in out, out[-4000:]

    info = json.loads((tmp_path / "model" / "model_info.json").read_text())
    training = info["training"]
    assert training["replicas"] == 2 and training["strategy"] == "MirroredStrategy"
    assert [d.rsplit(":", 1)[-1] for d in training["devices"]] == ["0", "1"]
    assert all("CPU" in d for d in training["devices"])
    assert training["precision"] == "float32" and training["global_batch_size"] == 16
    assert training["steps_per_epoch"] == 3 and training["unknown_words"] == ["bed", "cat"]
    assert json.loads((tmp_path / "model" / "labels.json").read_text())["labels"] == ["_unknown_", *LABELS]
    # Cosine over 2 x 3 steps: one epoch of warm-up to the peak, then decay to 1 % of it by step 6
    # (built for whole epochs, 2 x 6 steps, it would read 0.0011 then 0.002)
    with open(tmp_path / "reports" / "train" / "history.csv") as f:
        rates = [float(row["learning_rate"]) for row in csv.DictReader(f)]
    assert rates == pytest.approx([0.002, 0.00002], rel=1e-3)

    import keras

    from kws.serving.runtimes import TFLiteRuntime

    model = keras.models.load_model(tmp_path / "model" / "model.keras", compile=False)
    assert {layer.compute_dtype for layer in model.layers} == {"float32"}
    fold = model.get_layer("unknown_words_to_unknown").get_weights()[0]
    np.testing.assert_array_equal(fold, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1],
                                         [1, 0, 0, 0], [1, 0, 0, 0]])
    with np.load(tmp_path / "features" / "validation.npz") as d:
        x = d["x"][..., None]
    probs = model.predict(x, verbose=0)
    assert probs.shape == (12, 4) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(TFLiteRuntime(tmp_path / "model" / "model.tflite").infer(x), probs, atol=1e-5)

    from mlflow import MlflowClient

    run_id = json.loads((tmp_path / "model" / "run.json").read_text())["run_id"]
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id)
    assert run.data.tags["kws.replicas"] == "2" and run.data.tags["kws.strategy"] == "MirroredStrategy"
    assert run.data.params["trainer.distribute"] == "mirrored"
    assert run.data.params["train.unknown_by_word"] == "True"


def test_invalid_distribute_value_is_a_one_line_config_error(tmp_path, capsys):
    _params(tmp_path, "trainer.distribute=horovod")
    assert train_stage.main(["--params", str(tmp_path / "params.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("error: unknown trainer.distribute 'horovod': use none, mirrored or multi_worker "
                   "(or a preset: trainer=cpu|gpu|mirrored|multi_worker)")
    _params(tmp_path, "trainer.mixed_precision=maybe")
    assert train_stage.main(["--params", str(tmp_path / "params.yaml")]) == 1
    assert "trainer.mixed_precision must be true or false" in capsys.readouterr().err


@pytest.mark.parametrize("override", ["train.distribute=mirrored", "+train.mixed_precision=true"])
def test_the_recipes_old_hardware_keys_point_to_the_trainer_group(override):
    """Hardware left the recipe (conf/train/) for conf/trainer/: the old override says where it went."""
    key = override.lstrip("+").split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key} is now trainer\.\w+: choose the hardware with trainer=cpu\|gpu"):
        compose([override])


def test_a_params_yaml_with_the_old_keys_is_refused_before_training(tmp_path, capsys):
    """A params.yaml written before the trainer group (train.distribute) fails with the way out."""
    from omegaconf import OmegaConf

    path = _params(tmp_path)
    cfg = OmegaConf.load(path)
    cfg.train.distribute = "mirrored"
    del cfg["trainer"]
    OmegaConf.save(cfg, path)
    assert train_stage.main(["--params", str(path)]) == 1
    assert "error: train.distribute is now trainer.distribute: choose the hardware with trainer=" \
        in capsys.readouterr().err


@pytest.mark.parametrize("preset, kind, mixed", [("cpu", "none", False), ("gpu", "none", True),
                                                  ("mirrored", "mirrored", True), ("multi_worker", "multi_worker", False)])
def test_every_trainer_preset_composes_to_a_valid_setting(preset, kind, mixed):
    from kws.training.settings import distribute_config

    cfg = compose([f"trainer={preset}"])
    assert distribute_config(cfg) == (kind, mixed) and "distribute" not in cfg.train


def test_mixed_precision_model_has_a_float32_head_and_exports_as_float32():
    """Built (not trained: CPUs) under mixed_float16: softmax in float32; the exported copy is all
    float32 with the same weights, the adapted normalization included, and predicts the same."""
    import keras

    from kws.models import NORM_LAYER, build_model

    cfg = {"name": "ds_cnn", "filters": 8, "blocks": 1}
    x = np.random.default_rng(0).standard_normal((8, 49, 13)).astype(np.float32) * 3 + 1
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = distribute.float32_head(build_model(cfg, (49, 13), 3, x))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.dtype_policy.name == "mixed_float16" and model.layers[1].compute_dtype == "float16"
    assert model.layers[-1].compute_dtype == "float32" and model.output.dtype == "float32"
    export = distribute.float32_copy(model, lambda: build_model(cfg, (49, 13), 3))
    assert {layer.compute_dtype for layer in export.layers} == {"float32"}
    np.testing.assert_allclose(export.get_layer(NORM_LAYER).mean, model.get_layer(NORM_LAYER).mean, rtol=1e-3)
    np.testing.assert_allclose(export.predict(x[..., None], verbose=0), model.predict(x[..., None], verbose=0),
                               atol=2e-2)


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.mark.skipif(os.environ.get("KWS_TEST_MULTI_WORKER") != "1",
                    reason="two TensorFlow workers on localhost (~1 min on 2 cores): set KWS_TEST_MULTI_WORKER=1")
def test_multi_worker_on_localhost_only_the_chief_writes(tmp_path):
    """Two MultiWorkerMirroredStrategy workers (TF_CONFIG) train in sync; worker 0 (the chief)
    writes the model, the reports and the MLflow run, worker 1 nothing of it."""
    _features_dir(tmp_path)
    _params(tmp_path, "trainer=multi_worker")
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    procs = [_run_train(tmp_path, wait=False, TF_CONFIG=json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})) for i in range(2)]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    assert all("MultiWorkerMirroredStrategy with 2 replica(s) in sync" in out for out in outs)
    assert "not the chief worker" in outs[1] and "not the chief worker" not in outs[0]
    # the same (all-reduced) metrics on both workers: each epoch's log line, less its timing
    epochs = [[line.split("callbacks: ", 1)[1].rsplit(" (", 1)[0] for line in out.splitlines()
               if "kws.training.callbacks: epoch " in line] for out in outs]
    assert epochs[0] and epochs[0] == epochs[1]
    info = json.loads((tmp_path / "model" / "model_info.json").read_text())
    assert info["training"]["replicas"] == 2 and info["training"]["chief"] is True and info["run_id"]
    assert (tmp_path / "reports" / "train" / "history.csv").is_file()


def _resolver(task_type, task_id, cluster):
    return SimpleNamespace(cluster_resolver=SimpleNamespace(
        task_type=task_type, task_id=task_id, cluster_spec=lambda: SimpleNamespace(as_dict=lambda: cluster)))


@pytest.mark.parametrize("task_type, task_id, cluster, chief", [
    (None, None, {}, True),                                            # one machine, no TF_CONFIG
    ("worker", 0, {"worker": ["a:1", "b:1"]}, True),                   # worker 0 is the chief
    ("worker", 1, {"worker": ["a:1", "b:1"]}, False),
    ("chief", 0, {"chief": ["c:1"], "worker": ["a:1"]}, True),
    ("worker", 0, {"chief": ["c:1"], "worker": ["a:1"]}, False),       # an explicit chief task
    ("evaluator", 0, {"worker": ["a:1"]}, False),
])
def test_only_the_chief_writes_outputs(task_type, task_id, cluster, chief):
    assert distribute.is_chief(_resolver(task_type, task_id, cluster)) is chief
    assert distribute.is_chief(SimpleNamespace()) is True  # strategies without a cluster resolver
