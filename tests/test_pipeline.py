"""End to end: real `dvc repro` of every stage on a small offline (synthetic) dataset, in a
temporary copy of the project, with MLflow's embedded store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kws.bundle import read_meta
from kws.config import compose, write_params
from tests.support.workspace import copy_pipeline

pytestmark = pytest.mark.slow

STAGES = ("download", "prepare", "train", "evaluate", "stream", "promote")
#: the stream stage on 1 min of validation and 1 min of test audio (its figures are not the point here)
SHORT_STREAMS = ("stream.streams=2", "stream.validation_streams=2", "stream.duration_s=30",
                 "stream.thresholds.step=0.05")


def _overrides(sample_dir: Path, *extra: str) -> list[str]:
    return [
        "data=synthetic",
        "synthetic.voices=8", "synthetic.takes_per_voice=2",
        "synthetic.validation_voices=1", "synthetic.testing_voices=1",
        f"synthetic.noise_dir={sample_dir / '_background_noise_'}",
        "prepare.augment.copies=1",
        # 10 epochs on a few dozen synthetic clips: the MFCC front end and a plateau schedule learn
        # in that budget (log-mel + cosine, the real-speech recipe, is the last test's, on real clips)
        "features=mfcc", "train.lr_schedule=plateau", "train.label_smoothing=0.0",
        "train.epochs=10", "train.batch_size=32", "train.early_stopping_patience=10", "train.ensemble_seeds=[]",
        *SHORT_STREAMS, *extra,
    ]


@pytest.fixture(scope="module")
def project(tmp_path_factory, repo, sample_dir) -> Path:
    return copy_pipeline(repo, tmp_path_factory.mktemp("kws-project"),
                         compose(_overrides(sample_dir), conf_dir=repo / "conf"))


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # `python` in dvc.yaml = this venv
    env.pop("MLFLOW_TRACKING_URI", None)
    env["KWS_LOG_LEVEL"] = "INFO"
    return env


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _repro(root: Path) -> tuple[set[str], str]:
    proc = _run([sys.executable, "-m", "dvc", "repro"], root)
    out = proc.stdout + proc.stderr
    ran = {s for s in STAGES if f"Running stage '{s}'" in out}
    return ran, out


def _client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


@pytest.fixture(scope="module")
def first_repro(project):
    return _repro(project)


def test_repro_runs_every_stage_and_promotes(project, first_repro):
    ran, out = first_repro
    assert ran == set(STAGES), out[-3000:]
    info = json.loads((project / "data/raw/speech_commands.json").read_text())
    assert info["source"] == "synthetic" and len(info["sha256"]) == 64
    meta = json.loads((project / "data/features/meta.json").read_text())
    assert meta["source"]["sha256"] == info["sha256"] and len(meta["labels"]) == 12
    metrics = json.loads((project / "reports/evaluate/metrics.json").read_text())["test"]
    assert metrics["accuracy"] > 2 / 12, "the model learned nothing on an easy synthetic task"
    assert metrics["tflite_agreement"] == 1.0
    for plot in ("reports/train/training_curves.png", "reports/evaluate/confusion_matrix.png"):
        assert (project / plot).stat().st_size > 1000

    bundle = read_meta(project / "serving/model")
    assert bundle.labels == meta["labels"] and bundle.info["alias"] == "champion"
    assert bundle.metrics["accuracy"] == metrics["accuracy"]
    assert bundle.info["logit_offsets"] == {"_unknown_": 0.5}  # conf/'s default, baked in by train, carried over
    point = json.loads((project / "reports/stream/operating_point.json").read_text())
    assert bundle.detector == point and point["operating_point"]["chosen_on"] == "validation"  # travels with the model
    assert (project / "reports/stream/det.png").stat().st_size > 1000
    assert (project / "serving/model/model_int8.tflite").is_file()  # int8 beside float32, its check carried over
    assert set(bundle.info["int8"]) >= {"float32_accuracy", "int8_accuracy", "default"}

    client = _client(project)
    champion = client.get_model_version_by_alias("kws", "champion")
    assert bundle.info["version"] == str(champion.version)
    run = client.get_run(champion.run_id)
    assert run.data.params["model.name"] == "tc_resnet" and run.data.params["data.source"] == "synthetic"
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) >= 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"labels.json", "features.json", "plots", "bundle"} <= artifacts
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    model = mlflow.tensorflow.load_model(f"models:/kws@champion")
    assert model.output_shape[-1] == 12


def test_second_repro_does_nothing(project, first_repro):
    runs_before = len(_client(project).search_runs([_client(project).get_experiment_by_name("kws").experiment_id]))
    ran, out = _repro(project)
    assert ran == set(), out[-3000:]
    runs_after = len(_client(project).search_runs([_client(project).get_experiment_by_name("kws").experiment_id]))
    assert runs_after == runs_before


def test_training_param_change_reruns_only_train_onwards_and_worse_model_is_not_champion(project, sample_dir,
                                                                                          first_repro):
    first = json.loads((project / "reports/promotion.json").read_text())
    # A learning rate of ~0 leaves the model at chance level: a genuinely worse model.
    write_params(compose(_overrides(sample_dir, "train.learning_rate=1e-9", "train.epochs=1"),
                         conf_dir=project / "conf"), project / "params.yaml")
    ran, out = _repro(project)
    assert ran == {"train", "evaluate", "stream", "promote"}, out[-3000:]
    second = json.loads((project / "reports/promotion.json").read_text())
    assert second["test_accuracy"] < first["test_accuracy"]
    assert second["promoted"] is False and "champion kept" in second["reason"]
    assert second["registered_version"] != first["registered_version"]
    client = _client(project)
    assert str(client.get_model_version_by_alias("kws", "champion").version) == first["champion_version"]
    # The bundle served is still the champion's, fetched back from the registry's run.
    bundle = read_meta(project / "serving/model")
    assert bundle.info["version"] == first["champion_version"]
    assert bundle.metrics["accuracy"] == pytest.approx(first["test_accuracy"])


def test_dvc_exp_run_composes_hydra_overrides(project, sample_dir, first_repro):
    """`dvc exp run -S model=cnn_seed` goes through DVC's Hydra integration: conf/ is composed
    again with the overrides into params.yaml, and only the stages that depend on what changed
    run (the data overrides are the same as the first repro's, so download/prepare are cached)."""
    args = [a for o in _overrides(sample_dir, "model=cnn_seed") for a in ("-S", o)]
    proc = _run([sys.executable, "-m", "dvc", "exp", "run", "--name", "seed-baseline", *args], project)
    out = proc.stdout + proc.stderr
    ran = {s for s in STAGES if f"Running stage '{s}'" in out}
    assert ran == {"train", "evaluate", "stream", "promote"}, out[-3000:]
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["model"]["name"] == "cnn_seed" and params["data"]["name"] == "synthetic_speech_commands"
    show = _run([sys.executable, "-m", "dvc", "exp", "show", "--json"], project).stdout
    assert "seed-baseline" in show
    runs = _client(project).search_runs(
        [_client(project).get_experiment_by_name("kws").experiment_id],
        filter_string="params.`model.name` = 'cnn_seed'")
    assert len(runs) == 1 and "test_accuracy" in runs[0].data.metrics


@pytest.fixture(scope="module")
def real_pool(sample_dir, tmp_path_factory) -> dict[str, Path]:
    real = sample_dir.parent / "speech_commands_real"
    silence = sample_dir.parent / "speech_commands_real_silence"
    if not (real.is_dir() and silence.is_dir()):
        pytest.skip("real clips not found in ../shared/data")
    pool = tmp_path_factory.mktemp("pool")
    for word in ("yes", "no", "up", "dog", "wow"):  # symlinked word folders, as a user would point at a pool
        (pool / word).symlink_to(real / word, target_is_directory=True)
    return {"real": real, "pool": pool, "silence": silence}


def _real_pool_overrides(real_pool: dict[str, Path], sample_dir: Path, *extra: str) -> list[str]:
    return ["data=speech_commands_real", f"data.source={real_pool['pool']}", f"data.silence_dir={real_pool['silence']}",
            f"data.noise_dir={sample_dir / '_background_noise_'}", "data.extra=[]", "prepare.augment.copies=0",
            "train.epochs=2", "train.batch_size=32", "train.ensemble_seeds=[]", *SHORT_STREAMS, *extra]


def _canonical_tarball(real: Path, silence: Path, out: Path, per_class: int = 3) -> Path:
    """A small tarball in the canonical test set's layout (<class>/ incl. _unknown_, _silence_) from real clips."""
    import tarfile

    from kws.labels import task_labels

    with tarfile.open(out, "w:gz") as tar:
        for label in task_labels("keywords"):
            if label == "_silence_":
                clips = sorted(silence.glob("*.wav"))[:per_class]
            elif label == "_unknown_":
                clips = [sorted((real / w).glob("*.wav"))[0] for w in ("bed", "cat", "dog")]
            else:
                clips = sorted((real / label).glob("*.wav"))[:per_class]
            for clip in clips:
                tar.add(clip, arcname=f"./{label}/{clip.name}")
    return out


@pytest.fixture(scope="module")
def real_repro(project, sample_dir, first_repro, real_pool, tmp_path_factory):
    """The project switched to the real pool, with a canonical test set (a local tarball in the
    official layout, URL + sha256): one `dvc repro` for the two tests below. Returns the
    champion before it and the repro's (stages run, output)."""
    from kws.data.checksum import sha256_file

    before = _client(project).get_model_version_by_alias("kws", "champion")
    tarball = _canonical_tarball(real_pool["real"], real_pool["silence"],
                                 tmp_path_factory.mktemp("canonical") / "canonical.tar.gz")
    write_params(compose([*_real_pool_overrides(real_pool, sample_dir),
                          f"data.canonical_test={{source: {tarball.as_uri()}, sha256: {sha256_file(tarball)}}}"],
                         conf_dir=project / "conf"), project / "params.yaml")
    return before, _repro(project)


def test_champion_from_another_dataset_is_rescored_on_the_candidates_test_set(project, real_repro):
    """A real-speech candidate against a synthetic-data champion: accuracies on two different
    test sets are not compared; both models are re-scored on the candidate's (real) test split."""
    before, (ran, out) = real_repro
    assert ran == set(STAGES), out[-3000:]
    result = json.loads((project / "reports/promotion.json").read_text())
    meta = json.loads((project / "data/features/meta.json").read_text())
    assert result["test_set"] == {"dataset": "speech_commands_real", "test_digest": meta["test_digest"]}
    assert before.tags["dataset"] == "synthetic_speech_commands"
    assert "re-scored" in result["compared_on"], result
    assert isinstance(result["previous_champion_accuracy"], float)
    assert result["promoted"] == (result["test_accuracy"] >= result["previous_champion_accuracy"])
    version = _client(project).get_model_version("kws", result["registered_version"])
    assert version.tags["dataset"] == "speech_commands_real" and version.tags["test_digest"] == meta["test_digest"]
    bundle = read_meta(project / "serving/model")
    assert bundle.info["version"] == result["champion_version"]


def test_canonical_test_set_is_fetched_and_scored_by_evaluate(project, real_repro):
    """data.canonical_test: the download stage fetches it beside the dataset, evaluate scores the
    model on it per class, into metrics.json (dvc metrics) and MLflow. (Its checksum check:
    tests/test_download.py, without a `dvc repro`.)"""
    assert sorted(p.name for p in (project / "data/raw/canonical_test").iterdir())[:2] == ["_silence_", "_unknown_"]
    metrics = json.loads((project / "reports/evaluate/metrics.json").read_text())
    canonical = metrics["canonical"]
    assert canonical["n"] == 36 and canonical["errors"] == 0
    assert set(canonical["recall"]) == set(read_meta(project / "data/model").labels)
    assert 0.0 <= canonical["ci95"][0] <= canonical["accuracy"] <= canonical["ci95"][1] <= 1.0
    shown = _run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], project).stdout
    assert "canonical" in shown
    from kws.tracking import read_run

    run = _client(project).get_run(read_run(project / "data/model")["run_id"])
    assert run.data.metrics["canonical_accuracy"] == pytest.approx(canonical["accuracy"])
    assert "canonical_recall_silence" in run.data.metrics
