"""conf/ is the one source of truth: params.yaml must be exactly its Hydra composition."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from kws.config import compose, flatten, load_params, recorded_overrides
from kws.errors import ConfigError
from kws.features import FeatureConfig
from kws.labels import task_labels


def test_params_yaml_is_the_composition_of_conf_with_its_recorded_overrides(repo):
    """params.yaml is exactly conf/ composed with the overrides `kws-params` recorded in it: the
    default composition as committed, or e.g. `data=speech_commands_real` after the README's
    offline path — either way, a params.yaml that drifted from conf/ fails."""
    overrides = recorded_overrides(repo / "params.yaml")
    committed = OmegaConf.to_container(load_params(repo / "params.yaml"), resolve=True)
    composed = OmegaConf.to_container(compose(overrides, conf_dir=repo / "conf"), resolve=True)
    assert committed == composed, f"params.yaml is stale: run `kws-params {' '.join(overrides)}`"


def test_kws_params_records_its_overrides_and_drift_is_detected(tmp_path, repo):
    out = tmp_path / "params.yaml"
    proc = subprocess.run([sys.executable, "-m", "kws.config", "data=speech_commands_real", "train.epochs=3",
                           "--output", str(out), "--conf", str(repo / "conf")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert recorded_overrides(out) == ["data=speech_commands_real", "train.epochs=3"]
    cfg = load_params(out)
    assert cfg == compose(recorded_overrides(out), conf_dir=repo / "conf")
    assert cfg != compose([], conf_dir=repo / "conf")  # the check above is not vacuous


def test_default_config_targets_the_real_archive(repo):
    cfg = compose(conf_dir=repo / "conf")
    assert cfg.data.source == "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
    assert len(cfg.data.sha256) == 64
    assert len(task_labels(cfg.prepare.task)) == 12
    FeatureConfig.from_dict(cfg.features)


@pytest.mark.parametrize("model", ["cnn_seed", "ds_cnn", "bc_resnet", "tc_resnet"])
def test_every_model_group_composes(repo, model):
    cfg = compose([f"model={model}", "data=synthetic"], conf_dir=repo / "conf")
    assert cfg.model.name == model
    assert cfg.data.source == "synthetic"
    assert flatten(cfg)["model.name"] == model


def test_bad_override_is_a_config_error(repo):
    with pytest.raises(ConfigError, match="invalid configuration override"):
        compose(["model=no_such_model"], conf_dir=repo / "conf")


def test_kws_params_cli_writes_overrides(tmp_path, repo):
    out = tmp_path / "params.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "kws.config", "model=cnn_seed", "train.epochs=2", "--output", str(out),
         "--conf", str(repo / "conf")], capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    cfg = load_params(out)
    assert cfg.model.name == "cnn_seed" and cfg.train.epochs == 2
    bad = subprocess.run([sys.executable, "-m", "kws.config", "nonsense=", "--output", str(out), "--conf",
                          str(repo / "conf")], capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def test_recipe_knobs_documented_as_overrides_compose(repo):
    """The README/conf comments give these as plain overrides: they must compose as written."""
    cfg = compose(["train.class_weights={_unknown_:2.0}", "train.mixup_alpha=0.2"], conf_dir=repo / "conf")
    assert dict(cfg.train.class_weights) == {"_unknown_": 2.0}
    assert cfg.train.mixup_alpha == 0.2
