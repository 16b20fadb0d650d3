"""train.steps_per_epoch (its validation; the bounded run itself is trained in
tests/test_distribute.py, together with the mirrored strategy), train.unknown_by_word's targets
and fold matrix, train.keep_weights, train.ema_momentum, train.logit_offsets, and a SIGTERM during
training (real, tiny training runs, in this process)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from kws.config import compose, write_params
from kws.errors import ConfigError
from kws.stages import train as train_stage
from kws.training import heads, settings

from tests.support.features import tiny_features_dir


def _features_dir(root: Path) -> Path:
    return tiny_features_dir(root, kind="logmel", n_train=96)


def test_word_targets_give_each_unknown_word_a_class_and_keep_the_rest():
    import numpy as np

    labels = ["_silence_", "_unknown_", "yes"]
    y = np.array([1, 2, 1, 0, 1])
    files = np.array(["dog/a.wav", "yes/b.wav", "bed/c.wav", "_silence_", "dog/d.wav"])
    targets, words = heads.word_targets(y, files, labels)
    assert words == ["bed", "dog"] and targets.tolist() == [4, 2, 3, 0, 4]
    # validation: the training vocabulary; a word it lacks stays _unknown_
    targets, _ = heads.word_targets(np.array([1, 1]), np.array(["cat/e.wav", "bed/f.wav"]), labels, words)
    assert targets.tolist() == [1, 3]
    assert heads.word_targets(np.array([0, 1]), np.array(["_silence_", "yes/g.wav"]), ["_silence_", "yes"]) \
        == (pytest.approx([0, 1]), [])
    fold = heads.fold_matrix(labels, words)
    assert fold.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0], [0, 1, 0]]


@pytest.mark.parametrize("value", [0, -3, 2.5, "many", True])
def test_invalid_steps_per_epoch_is_a_config_error(value):
    with pytest.raises(ConfigError, match="train.steps_per_epoch"):
        settings.bounded_steps(SimpleNamespace(get=lambda key, default=None: value), 10)


def test_null_or_a_larger_bound_is_the_whole_epoch():
    get = lambda v: SimpleNamespace(get=lambda key, default=None: v)  # noqa: E731
    assert settings.bounded_steps(get(None), 12) == 12
    assert settings.bounded_steps(get(50), 12) == 12
    assert settings.bounded_steps(get(5), 12) == 5


def test_sigterm_during_training_ends_the_mlflow_run_as_killed_and_writes_no_model(tmp_path, monkeypatch, capsys):
    """`kill` mid-training: exit 143 after clean-up, the MLflow run is KILLED (never left RUNNING),
    no model folder appears. In this process (TensorFlow is loaded here already: a subprocess would
    cost a start-up), through the command's own entry point; a real SIGTERM to this process, sent
    as the second epoch is logged. (Signals arriving at any moment: tests/test_signals.py.)"""
    import logging
    import signal

    import mlflow
    from mlflow.tracking import MlflowClient

    _features_dir(tmp_path)
    cfg = compose([
        "model=ds_cnn", "model.filters=8", "model.blocks=1", "train.epochs=500", "train.batch_size=8",
        "train.early_stopping_patience=500", "train.ensemble_seeds=[]",
        f"paths.features={tmp_path / 'features'}", f"paths.model={tmp_path / 'model'}",
        f"paths.reports={tmp_path / 'reports'}",
    ])
    write_params(cfg, tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)  # the embedded MLflow store: tmp_path/mlflow.db
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sigterm_before, epochs = signal.getsignal(signal.SIGTERM), []

    class KillAtTheSecondEpoch(logging.Handler):
        def emit(self, record):
            epochs.append(record.getMessage())
            if record.getMessage().startswith("epoch 2/500:"):
                os.kill(os.getpid(), signal.SIGTERM)

    logger, handler, uri = logging.getLogger("kws"), KillAtTheSecondEpoch(), mlflow.get_tracking_uri()
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO  # whatever the root logger's level in this process
    try:
        rc = train_stage.main(["--params", str(tmp_path / "params.yaml")])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        mlflow.set_tracking_uri(uri)
    err = capsys.readouterr().err
    assert rc == 143, err[-3000:]
    assert "terminated (SIGTERM): cleaned up, outputs unchanged" in err, err[-3000:]
    assert "Traceback" not in err
    assert any(m.startswith("epoch 2/500:") for m in epochs) and not any(m.startswith("epoch 3/") for m in epochs)
    assert "training interrupted: MLflow run ended as KILLED, no model written" in epochs
    assert not (tmp_path / "model").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["KILLED"]
    assert signal.getsignal(signal.SIGTERM) == sigterm_before  # the command's handler is gone again


def test_keep_weights_is_validated():
    with pytest.raises(ConfigError, match="train.keep_weights"):
        settings.keep_weights(SimpleNamespace(get=lambda key, default=None: "newest"))


#: a tiny model trained for 4 epochs, keeping the weights it ends with
TINY_RUN = ["model=ds_cnn", "model.filters=8", "model.blocks=1", "train.epochs=4", "train.batch_size=8",
            "train.learning_rate=0.05", "train.keep_weights=last", "train.ensemble_seeds=[]"]


def _val_loss(model_dir: Path, features: Path) -> float:
    import keras
    import numpy as np

    model = keras.models.load_model(model_dir / "model.keras")
    with np.load(features / "validation.npz") as d:
        x, y = d["x"][..., None], keras.utils.to_categorical(d["y"], 3)
    return model.evaluate(x, y, verbose=0, return_dict=True)["loss"]


def _history(reports: Path) -> list[dict]:
    import csv

    return list(csv.DictReader(open(reports / "history.csv")))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same tiny config trained twice (4 epochs, `train.keep_weights=last`): (root, summaries)."""
    root = tmp_path_factory.mktemp("two_runs")
    _features_dir(root)
    cfg = compose([*TINY_RUN, f"paths.features={root / 'features'}"])
    summaries = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # the embedded MLflow store: root/mlflow.db
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for run in ("a", "b"):
            summaries.append(train_stage.train(cfg, root / "features", root / f"model_{run}", root / f"reports_{run}"))
    return root, summaries


def test_training_twice_gives_the_same_weights(two_runs):
    """`train.deterministic` (default true): seeds alone did not repeat a run (parallel SpecAugment
    maps, thread-order reductions); the same config and data now give bit-identical weights."""
    import keras
    import numpy as np

    root, _ = two_runs
    a, b = (keras.models.load_model(root / f"model_{run}" / "model.keras").get_weights() for run in ("a", "b"))
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert (root / "reports_a" / "history.csv").read_text() == (root / "reports_b" / "history.csv").read_text()


def test_keep_weights_last_saves_the_weights_training_ended_with(two_runs):
    """`train.keep_weights=last`: the saved model is the one training ended with (its validation
    loss is the last epoch's), not the best-val_accuracy epoch that `best_val` restores."""
    root, (summary, _) = two_runs
    val_loss = [float(r["val_loss"]) for r in _history(root / "reports_a")]
    kept = len(val_loss)
    assert summary["kept_epoch"] == kept and summary["val_loss"] == pytest.approx(val_loss[kept - 1])
    assert summary["best_epoch"] < kept  # the case that tells the two apart: best_val would restore an earlier epoch
    loss = _val_loss(root / "model_a", root / "features")
    assert loss == pytest.approx(val_loss[kept - 1], rel=1e-4)
    assert min(abs(loss - v) for v in val_loss if v != val_loss[kept - 1]) > 1e-4 * loss


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.2, "high", True])
def test_ema_momentum_is_validated(value):
    with pytest.raises(ConfigError, match="train.ema_momentum"):
        settings.ema_momentum(SimpleNamespace(get=lambda key, default=None: value))
    assert settings.ema_momentum(SimpleNamespace(get=lambda key, default=None: None)) is None


def test_ema_validates_and_exports_the_average_of_the_weights(two_runs):
    """`train.ema_momentum`: the average does not steer training (the raw weights follow run "a"
    of two_runs), so what differs is what is validated and saved: the average. The saved
    model's validation loss is the kept (last) epoch's in history.csv, and not run "a"'s."""
    root, (plain, _) = two_runs
    cfg = compose([*TINY_RUN, "train.ema_momentum=0.9", f"paths.features={root / 'features'}"])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        summary = train_stage.train(cfg, root / "features", root / "model_ema", root / "reports_ema")
    rows = _history(root / "reports_ema")
    assert summary["kept_epoch"] == len(rows) == 4
    loss = _val_loss(root / "model_ema", root / "features")
    assert loss == pytest.approx(float(rows[-1]["val_loss"]), rel=1e-4)
    assert abs(loss - plain["val_loss"]) > 1e-3 * loss  # not the raw weights run "a" saved
    # same training (to rounding: the optimizer's step is a different graph with the average in it)
    assert [float(r["loss"]) for r in rows] == pytest.approx([float(r["loss"]) for r in _history(root / "reports_a")],
                                                             rel=1e-5)


def test_ema_keeps_the_average_when_early_stopping_ends_training(tmp_path, monkeypatch):
    """Early stopping before the last epoch: Keras' fit() would write the raw training weights
    into the model at its end; with `keep_weights=last` the saved model must still be the average
    that the last epoch validated (a slow average barely moves, so patience 0 stops at epoch 2)."""
    _features_dir(tmp_path)
    cfg = compose([*TINY_RUN, "train.epochs=6", "train.ema_momentum=0.999", "train.early_stopping_patience=0",
                   f"paths.features={tmp_path / 'features'}"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    summary = train_stage.train(cfg, tmp_path / "features", tmp_path / "model", tmp_path / "reports")
    rows = _history(tmp_path / "reports")
    assert summary["epochs_run"] == len(rows) < 6  # it did stop early
    assert _val_loss(tmp_path / "model", tmp_path / "features") == pytest.approx(float(rows[-1]["val_loss"]), rel=1e-4)


@pytest.mark.parametrize("value", [0.5, {"_unknown_": "lots"}, {"_unknown_": True}, {"_unknown_": float("inf")},
                                   {"_unknwn_": 0.5}])
def test_logit_offsets_are_validated(value):
    with pytest.raises(ConfigError, match="train.logit_offsets"):
        settings.logit_offsets(SimpleNamespace(get=lambda key, default=None: value))


def test_logit_offsets_of_another_tasks_label_are_left_out():
    t = SimpleNamespace(get=lambda key, default=None: {"_unknown_": 0.5, "yes": -1})
    assert settings.logit_offsets(t, ["_silence_", "yes", "zero"]) == {"yes": -1.0}  # all_words: no _unknown_
    assert settings.logit_offsets(SimpleNamespace(get=lambda key, default=None: None), ["yes"]) == {}


@pytest.mark.parametrize("unknown_words", [(), ("cat", "dog")], ids=["labels", "one class per unknown word"])
def test_logit_offsets_shift_the_exported_models_log_probabilities(tmp_path, monkeypatch, unknown_words):
    """The same training with and without `train.logit_offsets`: the exported model's (Keras and
    TFLite) probabilities are softmax(log p + offset) of the plain one's, and the offset changes
    answers. With one class per unknown word, `_unknown_`'s offset applies to its words' sum."""
    import keras
    import numpy as np

    from kws.serving.runtimes import TFLiteRuntime

    features = tiny_features_dir(tmp_path, kind="logmel", n_train=96, unknown_words=unknown_words)
    labels = json.loads((features / "meta.json").read_text())["labels"]
    offsets = {"_unknown_": 1.5, "no": -2.0} if unknown_words else {"no": -2.0, "up": 1.0}
    # Hydra's syntax: change the default's key, add (+) others; without _unknown_ its default is left out
    shifted = [f"{'' if label == '_unknown_' else '+'}train.logit_offsets.{label}={v}" for label, v in offsets.items()]
    base = [*TINY_RUN, "train.epochs=2", f"paths.features={features}"] + (["train.unknown_by_word=true"] if unknown_words else [])
    configs = {"plain": compose([*base, "train.logit_offsets=null"]),
               "shifted": compose([*base, *shifted])}
    monkeypatch.chdir(tmp_path)  # the embedded MLflow store (after composing: conf/ is found from the repo)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with np.load(features / "validation.npz") as d:
        x = d["x"][..., None].astype(np.float32)
    probs = {}
    for name, cfg in configs.items():
        train_stage.train(cfg, features, tmp_path / name, tmp_path / f"reports_{name}")
        probs[name] = keras.models.load_model(tmp_path / name / "model.keras").predict(x, verbose=0)
        np.testing.assert_allclose(TFLiteRuntime(tmp_path / name / "model.tflite").infer(x), probs[name], atol=1e-5)
    b = np.asarray([offsets.get(label, 0.0) for label in labels])
    expected = probs["plain"] * np.exp(b)
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(probs["shifted"], expected, rtol=1e-4, atol=1e-6)
    assert not np.array_equal(probs["shifted"].argmax(1), probs["plain"].argmax(1))
    assert json.loads((tmp_path / "shifted" / "model_info.json").read_text())["logit_offsets"] == offsets


@pytest.mark.parametrize("seeds, message", [
    ({"train.ensemble_seeds": [42]}, "differ from each other and from the training seed 42"),
    ({"train.ensemble_seeds": [7, 7]}, "differ"),
    ({"train.ensemble_seeds": "7"}, "a list of integers"),
    ({"train.ensemble_seeds": [1.5]}, r"train.ensemble_seeds\[0\] must be a non-negative integer"),
    ({"train.seed": -1}, "train.seed must be a non-negative integer"),
])
def test_ensemble_seeds_are_validated(seeds, message):
    cfg = compose([*TINY_RUN, *(f"{k}={json.dumps(v)}" for k, v in seeds.items())])
    with pytest.raises(ConfigError, match=message):
        settings.check(cfg)


def test_the_training_seed_defaults_to_the_top_level_seed_and_members_follow_it():
    assert settings.member_seeds(compose(TINY_RUN)) == [42]
    assert settings.member_seeds(compose([])) == [42, 7, 1234]  # the served recipe: three
    assert settings.member_seeds(compose([*TINY_RUN, "seed=3", "train.ensemble_seeds=[7,1234]"])) == [3, 7, 1234]
    assert settings.member_seeds(compose([*TINY_RUN, "train.seed=5", "train.ensemble_seeds=[7]"])) == [5, 7]


def test_a_seed_ensemble_exports_the_mean_of_the_models_its_seeds_train_alone(two_runs):
    """`train.ensemble_seeds=[7]`: one exported model (Keras and TFLite) whose probabilities are the
    mean of run "a"'s (seed 42, two_runs) and of a run trained alone with `train.seed=7`: each member
    trains as a run of its own would, though both train in one process. The summary and
    model_info say it is an ensemble; the second member's metrics are in the same MLflow run."""
    import keras
    import numpy as np
    from mlflow.tracking import MlflowClient

    from kws.serving.runtimes import TFLiteRuntime

    root, (plain, _) = two_runs
    configs = {name: compose([*TINY_RUN, extra, f"paths.features={root / 'features'}"])  # conf/ is found from here
               for name, extra in {"seed7": "train.seed=7", "ensemble": "train.ensemble_seeds=[7]"}.items()}
    # one after another in this process, as "a" was (side by side: tests/test_parallel_models.py)
    configs["ensemble"].trainer.parallel_models = 1
    summaries = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for name, cfg in configs.items():
            summaries[name] = train_stage.train(cfg, root / "features", root / f"model_{name}", root / f"reports_{name}")
        run_id = json.loads((root / "model_ensemble" / "run.json").read_text())["run_id"]
        metrics = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").get_run(run_id).data.metrics
    with np.load(root / "features" / "validation.npz") as d:
        x = d["x"][..., None].astype(np.float32)
    probs = {name: keras.models.load_model(root / f"model_{name}" / "model.keras").predict(x, verbose=0)
             for name in ("a", "seed7", "ensemble")}
    assert not np.allclose(probs["a"], probs["seed7"], atol=1e-3)  # two seeds, two models
    np.testing.assert_allclose(probs["ensemble"], (probs["a"] + probs["seed7"]) / 2, atol=1e-5)
    np.testing.assert_allclose(TFLiteRuntime(root / "model_ensemble" / "model.tflite").infer(x), probs["ensemble"],
                               atol=1e-5)
    s = summaries["ensemble"]
    assert s["members"] == 2 and s["member_val_accuracy"] == pytest.approx(
        [plain["val_accuracy"], summaries["seed7"]["val_accuracy"]])
    y = np.load(root / "features" / "validation.npz")["y"]
    assert s["val_accuracy"] == pytest.approx(float(np.mean(probs["ensemble"].argmax(1) == y)))
    info = json.loads((root / "model_ensemble" / "model_info.json").read_text())
    assert info["training"]["seeds"] == [42, 7]
    assert (root / "reports_ensemble" / "history.csv").read_text() == (root / "reports_a" / "history.csv").read_text()
    assert {"loss", "member1_loss", "member1_val_accuracy", "ensemble_val_accuracy"} <= set(metrics)
