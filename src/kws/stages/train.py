"""DVC stage `train`: features -> Keras model, tracked in MLflow.

SpecAugment-style time/coefficient masking and optional mixup on the fly, label smoothing,
per-example weights (extra training sources), a plateau or cosine learning-rate schedule, early
stopping on validation accuracy with the best (or last) weights kept, seeded and deterministic.
MLflow gets every resolved parameter, per-epoch metrics, the model (with signature and input
example), the label map, the feature config and a training-curves plot. ``train.steps_per_epoch``
(null: the whole training split) bounds the steps of each epoch, for benchmarks and smoke runs.
The run id goes to ``<model dir>/run.json`` so evaluate and promote log into the same run.

Hardware is the ``trainer`` config group, apart from the recipe: ``trainer=cpu`` (default: one
device, float32), ``gpu`` (mixed precision), ``mirrored`` (every GPU of this machine) or
``multi_worker`` (a ``TF_CONFIG`` cluster); see :mod:`kws.training.distribute`. The global batch
is ``train.batch_size`` x replicas in sync. ``train.logit_offsets`` (label -> number) is added to
those labels' logits in the exported model, so the service, ``kws-score``, evaluate and promote
all decide with it. ``train.ensemble_seeds`` trains the recipe again from each of those training
seeds on the same features and exports the mean of the models' probabilities as one model
(:mod:`kws.training.ensemble`); history.csv and the curves are the first model's, the MLflow
metrics of the others carry ``member1_``, ``member2_``... On CPUs the members train side by side,
each in a process of its own on ``trainer.threads`` (``trainer.parallel_models``, default auto:
one per core; :mod:`kws.training.members`). The work itself is :mod:`kws.training`'s; this module
puts it in order.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kws.training import ensemble, export, members

log = logging.getLogger(__name__)


def train(cfg, features_dir: Path, model_dir: Path, reports_dir: Path) -> dict:
    r = members.prepare(cfg, features_dir)
    seeds, splits = r.checked.seeds, r.splits
    with export.outputs(cfg, r.devices.chief, model_dir, reports_dir) as (run, model_dir, reports_dir):
        trained = members.fit_all(r, run)
        _, history, summary = trained[0]  # history.csv, the curves and best_* are the first member's
        curves = export.write_history(history, reports_dir)
        final = ensemble.averaged([m for m, _, _ in trained])
        if len(trained) > 1:
            summary = ensemble.summary(final, [s for _, _, s in trained], splits)
            log.info("seed ensemble of %d (seeds %s): val_accuracy %.4f (members %s)", len(seeds), seeds,
                     summary["val_accuracy"], ", ".join(f"{s:.4f}" for s in summary["member_val_accuracy"]))
            if run is not None:
                export.log_ensemble(summary)
        run_info = export.write_model(cfg, run, final, splits.x_val[:1, ..., None], curves, model_dir, splits,
                                      summary, r.training, r.offsets)
    log.info("trained %s: run %s", cfg.model.name if len(seeds) == 1 else f"an ensemble of {len(seeds)} {cfg.model.name}",
             run_info["run_id"])
    return summary


def main(argv: list[str] | None = None) -> int:
    from kws.cli import stage_cli

    return stage_cli("kws-train", __doc__.splitlines()[0],
                     lambda cfg: train(cfg, Path(cfg.paths.features), Path(cfg.paths.model), Path(cfg.paths.reports) / "train"), argv)


if __name__ == "__main__":
    raise SystemExit(main())
