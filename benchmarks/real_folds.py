"""One fold of one ``bench_real.py`` candidate: its configuration composed for that fold, its
features prepared and its model trained by the pipeline's own stages, both cached under the
bench's work folder by what they were made from (same config and files = same model), and a
seed ensemble averaged from its cached members as the train stage exports it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from _common import REPO

log = logging.getLogger("bench_real")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _files_named(obj) -> dict[str, str]:
    """``{path: sha256}`` of every existing file a (nested) config value names."""
    if isinstance(obj, dict):
        return {k: v for value in obj.values() for k, v in _files_named(value).items()}
    if isinstance(obj, list):
        return {k: v for value in obj for k, v in _files_named(value).items()}
    if isinstance(obj, str) and len(obj) < 4096 and Path(obj).is_file():
        return {obj: hashlib.sha256(Path(obj).read_bytes()).hexdigest()}
    return {}


def member_overrides(cfg) -> list[list[str]]:
    """A seed ensemble's members (``train.ensemble_seeds``) as overrides of one model each: the first
    keeps ``train.seed``, each other gets its seed. [] for a single model."""
    from kws.training.settings import member_seeds

    seeds = member_seeds(cfg)
    if len(seeds) == 1:
        return []
    first = [] if cfg.train.get("seed") is None else [f"train.seed={seeds[0]}"]
    return [[*first, "train.ensemble_seeds=[]"], *([f"train.seed={s}", "train.ensemble_seeds=[]"] for s in seeds[1:])]


def compose_fold(overrides: list[str], fold: int, work: Path, name: str):
    from omegaconf import OmegaConf

    from kws.config import compose

    cfg = compose(["data=speech_commands_real", f"data.split.test_fold={fold}", *overrides], conf_dir=REPO / "conf")
    OmegaConf.set_struct(cfg, False)
    c = OmegaConf.to_container(cfg, resolve=True)
    files = _files_named(c["data"]["extra"])  # e.g. the negatives' word list: a new list, new examples
    contents = {"files": files} if files else {}  # none named: the keys of the folds cached before
    data_key = _digest({k: c[k] for k in ("features", "prepare", "seed")} | {k: c["data"][k] for k in ("split", "extra")}
                       | contents)
    cfg.paths.dataset = str(work / "raw" / "speech_commands")
    cfg.paths.extra = str(work / "raw" / "extra")
    # same config and files = same trained model. The seed keys at their neutral values (one model,
    # the top-level seed) train what was trained before they existed; the stream benchmark's settings
    # (how a trained model is measured) are no part of what was trained
    train = {k: v for k, v in c["train"].items()
             if not (k == "seed" and v is None) and not (k == "ensemble_seeds" and not v)}
    # how many models trained at once leaves each one's weights as they are (tests/test_parallel_models.py)
    trainer = {k: v for k, v in c["trainer"].items() if k != "parallel_models"}
    run_key = _digest({k: v for k, v in c.items() if k not in ("paths", "stream")} | {"train": train, "trainer": trainer}
                      | contents)
    cfg.paths.features = str(work / "features" / data_key)
    cfg.paths.model = str(work / "models" / run_key / f"fold{fold}")
    cfg.paths.reports = str(work / "reports" / run_key / f"fold{fold}")
    cfg.prepare.workers = 0
    return cfg


def prepared(cfg) -> float:
    """Prepare this fold's features unless an earlier run left them: the seconds it took here."""
    from kws.stages.prepare import prepare

    features = Path(cfg.paths.features)
    t0 = time.perf_counter()
    if not (features / "meta.json").is_file():
        prepare(cfg, Path(cfg.paths.dataset), features, extra_dir=Path(cfg.paths.extra))
    return time.perf_counter() - t0


def trained(cfg) -> tuple[float, dict]:
    """Prepare and train this fold's configuration, or reuse what an earlier run left: the
    seconds prepare took here, and the training summary."""
    from kws.stages.train import train

    prepare_s = prepared(cfg)
    done = Path(cfg.paths.model) / "bench_train.json"
    if done.is_file():  # this exact configuration was trained on this fold already (e.g. while screening)
        log.info("reusing the model trained with this configuration: %s", cfg.paths.model)
        return prepare_s, json.loads(done.read_text())
    summary = train(cfg, Path(cfg.paths.features), Path(cfg.paths.model), Path(cfg.paths.reports))  # clears Keras' session itself
    done.write_text(json.dumps(summary) + "\n")
    return prepare_s, summary


def _train_member(config: dict) -> None:
    """A spawned worker: one member trained by the train stage's own code, cached as :func:`trained` does."""
    from omegaconf import OmegaConf

    from kws.logs import setup_logging

    setup_logging()
    # a store of its own: two processes creating one SQLite store at once collide ("table
    # experiments already exists"); the bench reads the model folders, not these runs
    store = Path(config["paths"]["model"] + ".mlflow")
    store.mkdir(parents=True, exist_ok=True)
    os.chdir(store)
    trained(OmegaConf.create(config))


def _train_side_by_side(cfg, todo: list) -> None:
    """The ``todo`` members trained as the train stage trains an ensemble's models: side by side,
    each in a fresh process on ``trainer.threads``, as many at once as the stage would train
    (:func:`kws.training.members.models_at_once`), so the same weights as the stage's members."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from omegaconf import OmegaConf

    from kws.training import members, settings

    n = members.models_at_once(settings.check(cfg), len(todo), False, Path(cfg.paths.features))
    if n < 2:
        return
    log.info("training %d members %d at a time, each in a process of its own", len(todo), n)
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_train_member, [OmegaConf.to_container(m, resolve=True) for m in todo]))


def ensemble_fold(cfg, members: list) -> tuple[float, dict]:
    """A seed ensemble (``train.ensemble_seeds``) from its members, each trained as a single model
    (or reused from the cache: a member is a single-model candidate of its own) on the same
    features, then averaged into ``cfg``'s bundle with :func:`kws.training.ensemble.averaged`, as
    the train stage exports it (tests/test_train_steps.py: the same as training them in one run).
    ``(prepare_s, summary)``; the int8 model is calibrated and checked like a trained one."""
    import keras

    from kws.bundle import read_meta
    from kws.training.data import load
    from kws.training.ensemble import averaged
    from kws.training.ensemble import summary as ensemble_summary
    from kws.training.export import write_model
    from kws.training.settings import member_seeds

    prepare_s = prepared(members[0])  # the members' features are the same: made once, before they train
    _train_side_by_side(cfg, [m for m in members if not (Path(m.paths.model) / "bench_train.json").is_file()])
    runs = [trained(m) for m in members]  # the summaries (or, one member: trained here)
    runs[0] = (prepare_s, runs[0][1])
    done = Path(cfg.paths.model) / "bench_train.json"
    if done.is_file():
        log.info("reusing the ensemble of these members: %s", cfg.paths.model)
        return sum(p for p, _ in runs), json.loads(done.read_text())
    keras.backend.clear_session()
    average = averaged([keras.models.load_model(Path(m.paths.model) / "model.keras", compile=False) for m in members])
    splits = load(cfg.train, Path(cfg.paths.features))
    summary = ensemble_summary(average, [s for _, s in runs], splits) | {"member_dirs": [str(m.paths.model) for m in members]}
    info = read_meta(members[0].paths.model).info  # the members' training settings and logit offsets
    # no MLflow run (run=None): the bundle and run.json only, written as the train stage writes them
    write_model(cfg, None, average, None, None, Path(cfg.paths.model), splits, summary,
                {**info.get("training", {}), "seeds": member_seeds(cfg)}, info.get("logit_offsets") or {})
    done.write_text(json.dumps(summary) + "\n")
    return sum(p for p, _ in runs), summary
