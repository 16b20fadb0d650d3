"""Configuration: Hydra composes ``conf/`` into the resolved ``params.yaml`` that DVC tracks.

``conf/`` is the one source of truth. ``params.yaml`` is its composition (defaults, or
with overrides): DVC's Hydra integration writes it on ``dvc exp run -S key=value``;
``kws-params key=value`` writes it for a plain ``dvc repro``. Every stage reads it via
:func:`load_params`, so what DVC hashes is exactly what the stage uses.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from kws.errors import ConfigError

PARAMS_FILE = "params.yaml"
CONF_DIR = "conf"
HEADER = (
    "# GENERATED from conf/ by Hydra (`kws-params` or `dvc exp run -S ...`). Do not edit:\n"
    "# change conf/ or pass overrides, e.g. `kws-params model=bc_resnet train.epochs=10`.\n"
)


#: keys that left the recipe for a config group of their own: ``old key -> group``
MOVED = {"train.distribute": "trainer", "train.mixed_precision": "trainer"}


def compose(overrides: Iterable[str] = (), conf_dir: str | Path = CONF_DIR) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra ``overrides`` (``group=option``, ``a.b=value``)."""
    overrides = list(overrides)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in MOVED:
            group, leaf = MOVED[key], key.split(".", 1)[1]
            raise ConfigError(f"{key} is now {group}.{leaf}: choose the hardware with {group}=cpu|gpu|mirrored|"
                              f"multi_worker (conf/{group}/), or override {group}.{leaf}=...")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / "config.yaml").is_file():
        raise ConfigError(f"no Hydra config at {conf_dir}/config.yaml; run from the project root")
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"invalid configuration override: {err}") from None


OVERRIDES_TAG = "# kws-params overrides: "


def write_params(cfg: DictConfig, path: str | Path = PARAMS_FILE, overrides: Iterable[str] = ()) -> Path:
    """Write the composition ``cfg`` to ``path``; ``overrides`` (what it was composed with) are
    recorded in a header line, so the file can be checked against conf/ (:func:`recorded_overrides`)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(HEADER + OVERRIDES_TAG + json.dumps(list(overrides)) + "\n" + OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, path)
    return path


def recorded_overrides(path: str | Path = PARAMS_FILE) -> list[str]:
    """The overrides ``kws-params`` recorded in ``path`` ([] for the plain default composition)."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(OVERRIDES_TAG):
            return list(json.loads(line[len(OVERRIDES_TAG):]))
    return []


def load_params(path: str | Path = PARAMS_FILE) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run `kws-params` (or `dvc exp run`) from the project root")
    return OmegaConf.load(path)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config to ``{"model.name": "ds_cnn", ...}`` (for MLflow params)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def main(argv: list[str] | None = None) -> int:
    from kws.cli import run_cli

    parser = argparse.ArgumentParser(
        prog="kws-params", description="Compose conf/ with Hydra overrides into params.yaml."
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=bc_resnet train.epochs=10")
    parser.add_argument("--output", default=PARAMS_FILE)
    parser.add_argument("--conf", default=CONF_DIR)
    args = parser.parse_args(argv)

    def _run() -> None:
        path = write_params(compose(args.overrides, args.conf), args.output, args.overrides)
        print(f"wrote {path}")

    return run_cli(_run)


if __name__ == "__main__":
    raise SystemExit(main())
