"""DVC stage `promote`: register the model, move the `champion` alias only if it is at least
as good ON THE SAME TEST SET, and export the champion's serving bundle to ``serving/model/``.

Like with like: a registry version records its dataset name and the digest of its test
split. When the champion was scored on the same test set, the recorded accuracies are
compared. Otherwise both models are re-scored here on the candidate's test split (every
clip rendered again, each model with its own front end, through the service's predictor);
a champion that cannot be scored on it (other labels) is kept, with a message naming
``kws-promote --force``. Every evaluated bundle is logged to its run under ``bundle/``, so the
export always comes from the registry's champion, whichever run produced it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from kws.atomic import staged_dir, write_text
from kws.config import load_params
from kws.errors import KWSError

log = logging.getLogger(__name__)

BUNDLE_ARTIFACT = "bundle"


def _champion(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _accuracy_of(client, version) -> float:
    if "test_accuracy" in version.tags:
        return float(version.tags["test_accuracy"])
    return float(client.get_run(version.run_id).data.metrics.get("test_accuracy", float("-inf")))


def _compare(client, current, metrics: dict, test_set: dict, features_dir: Path, model_dir: Path, alias: str):
    """(candidate accuracy, champion accuracy, how they were compared) on one test set;
    champion accuracy None: not comparable (the reason is the third item)."""
    from kws.artifacts import TEST_EXAMPLES_FILE
    from kws.errors import NotComparableError
    from kws.scoring.split_accuracy import bundle_accuracy

    new_acc = metrics["accuracy"]
    same = (current.tags.get("dataset") == test_set.get("dataset")
            and current.tags.get("test_digest") == test_set.get("test_digest") and test_set.get("test_digest"))
    if same:
        return new_acc, _accuracy_of(client, current), "the same test set"
    examples = features_dir / TEST_EXAMPLES_FILE
    where = f"{current.tags.get('dataset')!r} test set {str(current.tags.get('test_digest'))[:12]}"
    if not examples.is_file():
        return new_acc, None, f"champion v{current.version} was scored on {where} and {examples} is missing"
    test = json.loads(examples.read_text())
    log.info("champion v%s was scored on %s: re-scoring it and the candidate on %r test set %s",
             current.version, where, test_set.get("dataset"), str(test_set.get("test_digest"))[:12])
    with tempfile.TemporaryDirectory(prefix="kws-champion-") as tmp:
        try:
            export_bundle(current.run_id, Path(tmp) / "bundle", alias)
            old_acc = bundle_accuracy(Path(tmp) / "bundle", test)
        except NotComparableError as err:
            return new_acc, None, f"champion v{current.version} cannot be scored on this test set: {err}"
    return bundle_accuracy(model_dir, test), old_acc, f"both re-scored on this model's {test_set.get('dataset')!r} test set"


def promote(cfg, model_dir: Path, metrics_file: Path, bundle_dir: Path, report_file: Path, force: bool = False,
            features_dir: Path | None = None) -> dict:
    import mlflow
    from mlflow import MlflowClient

    from kws import tracking
    from kws.bundle import DETECTOR_FILE, INFO_FILE, METRICS_FILE, read_meta
    from kws.streaming.benchmark import promotion_record

    if not metrics_file.is_file():
        raise KWSError(f"{metrics_file} not found: run the evaluate stage first")
    evaluation = json.loads(metrics_file.read_text())
    metrics, test_set = evaluation["test"], evaluation.get("test_set") or {}
    run = tracking.read_run(model_dir)
    tracking.setup(cfg.mlflow.experiment)
    client = MlflowClient()
    name, alias = cfg.mlflow.registered_model, cfg.mlflow.alias

    # the stream stage's operating point (-> the bundle's detector.json) and test-stream figures
    detector, stream_tags = promotion_record(Path(cfg.paths.reports) / "stream")
    version = mlflow.register_model(run["model_uri"], name, tags={
        "test_accuracy": f"{metrics['accuracy']:.6f}", "architecture": run["architecture"],
        "dataset": cfg.data.name, "task": cfg.prepare.task, "run_id": run["run_id"],
        "test_digest": str(test_set.get("test_digest")), **stream_tags,
    })
    current = _champion(client, name, alias)
    stream = {k: stream_tags.get(k) for k in ("stream_recall", "stream_fa_per_hour", "stream_threshold")}
    if current is not None and stream_tags and current.tags.get("stream_key") == stream_tags["stream_key"]:
        stream["champion_stream_recall"] = current.tags.get("stream_recall")  # like with like: the same test streams
    new_acc, old_acc, compared = metrics["accuracy"], None, "no champion yet"
    if current is not None:
        new_acc, old_acc, compared = _compare(client, current, metrics, test_set,
                                              Path(features_dir or cfg.paths.features), model_dir, alias)
    promoted = force or current is None or (old_acc is not None and new_acc >= old_acc)

    # Every registered version carries its complete serving bundle as run artifacts.
    info = {
        "name": name, "version": str(version.version), "run_id": run["run_id"],
        "architecture": run["architecture"], "dataset": cfg.data.name, "task": cfg.prepare.task,
        "registered_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # how the model decides (train.logit_offsets, baked into its weights): shown by the service's /model
        "logit_offsets": read_meta(model_dir).info.get("logit_offsets", {}),
        # the int8 export check (kws.bundle.int8_check): it decides the service's auto runtime
        **{k: v for k, v in read_meta(model_dir).info.items() if k == "int8"},
    }
    with tempfile.TemporaryDirectory(prefix="kws-bundle-") as tmp:
        staged = Path(tmp) / BUNDLE_ARTIFACT
        shutil.copytree(model_dir, staged, ignore=shutil.ignore_patterns(tracking.RUN_FILE))
        (staged / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        (staged / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if detector:
            (staged / DETECTOR_FILE).write_text(json.dumps(detector, indent=2) + "\n")
        read_meta(staged)  # refuse to publish an incomplete bundle
        with mlflow.start_run(run_id=run["run_id"]):
            mlflow.log_artifacts(str(staged), BUNDLE_ARTIFACT)
            mlflow.set_tags({"kws.registered_version": version.version, "kws.promoted": str(promoted)})

    if promoted:
        client.set_registered_model_alias(name, alias, version.version)
        champion = client.get_model_version(name, version.version)
        reason = ("forced" if force else "first model" if current is None
                  else f"test accuracy {new_acc:.4f} >= champion v{current.version}'s {old_acc:.4f} ({compared})")
        log.info("'%s' now points to %s v%s: %s", alias, name, version.version, reason)
    elif old_acc is None:
        champion = current
        reason = f"not comparable: {compared}; champion kept (`kws-promote --force` replaces it)"
        log.warning("not promoted: %s", reason)
    else:
        champion = current
        reason = (f"test accuracy {new_acc:.4f} < champion v{current.version}'s {old_acc:.4f} ({compared}); "
                  "champion kept")
        log.warning("not promoted: %s", reason)

    export_bundle(champion.run_id, bundle_dir, alias)
    result = {
        "promoted": promoted, "reason": reason, "registered_version": str(version.version),
        "champion_version": str(champion.version), "champion_run_id": champion.run_id,
        "test_accuracy": new_acc, "previous_champion_accuracy": old_acc, "compared_on": compared,
        "test_set": test_set, "bundle": str(bundle_dir), "stream": stream,
    }
    write_text(report_file, json.dumps(result, indent=2) + "\n")
    return result


def export_bundle(run_id: str, bundle_dir: Path, alias: str) -> Path:
    """Download a run's logged bundle and swap it into ``bundle_dir`` atomically."""
    import mlflow

    from kws.bundle import INFO_FILE, read_meta

    with staged_dir(bundle_dir) as tmp:
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=BUNDLE_ARTIFACT, dst_path=str(tmp))
        for item in (tmp / BUNDLE_ARTIFACT).iterdir():
            item.rename(tmp / item.name)
        (tmp / BUNDLE_ARTIFACT).rmdir()
        info = json.loads((tmp / INFO_FILE).read_text())
        (tmp / INFO_FILE).write_text(json.dumps({**info, "alias": alias}, indent=2) + "\n")
        read_meta(tmp)
    log.info("exported the champion's bundle (run %s) to %s", run_id, bundle_dir)
    return bundle_dir


def main(argv: list[str] | None = None) -> int:
    from kws.cli import run_cli

    parser = argparse.ArgumentParser(prog="kws-promote", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--force", action="store_true", help="make this model the champion regardless of accuracy")
    args = parser.parse_args(argv)

    def _run() -> None:
        cfg = load_params(args.params)
        reports = Path(cfg.paths.reports)
        promote(cfg, Path(cfg.paths.model), reports / "evaluate" / "metrics.json", Path(cfg.paths.bundle),
                reports / "promotion.json", force=args.force)

    return run_cli(_run)


if __name__ == "__main__":
    raise SystemExit(main())
