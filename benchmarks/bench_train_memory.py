"""The train stage's memory on features the size of the full archive's: peak RSS and PSS of its
process tree (the stage and its worker processes), one model at a time against the served
ensemble's models side by side (``trainer.parallel_models``).

The features are random, in the prepare stage's layout, as many examples as the full archive's
training and validation splits give (``bench_scale.py`` counted them); training is bounded
(one epoch of a few steps), since memory, not time, is measured: every copy of the features is
made before the first step. The conf/ defaults otherwise (the served recipe: three models).

    .venv/bin/python benchmarks/bench_train_memory.py [--train 115746 --validation 4368]

Writes ``benchmarks/results/train_memory.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from _common import REPO, machine_info, table, write_result
from scale_run import Run

from kws.config import compose, write_params

from tests.support.features import tiny_features_dir

SETTINGS = {"one at a time": ["trainer.parallel_models=1"], "side by side (auto)": ["trainer.parallel_models=auto"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=115_746)
    ap.add_argument("--validation", type=int, default=4_368)
    ap.add_argument("--work", type=Path, default=Path("/tmp/kws-train-memory"))
    args = ap.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    t0 = time.perf_counter()
    features = tiny_features_dir(args.work, kind="logmel", n_train=args.train, n_val=args.validation)
    print(f"features: {args.train:,} + {args.validation:,} examples, "
          f"{sum(f.stat().st_size for f in features.glob('*.npz')) / 1e9:.2f} GB ({time.perf_counter() - t0:.0f} s)")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONPATH": str(REPO / "src")}
    rows = {}
    for name, overrides in SETTINGS.items():
        run = args.work / name.split()[0]
        run.mkdir()
        cfg = compose([*overrides, "train.epochs=1", "train.steps_per_epoch=20", f"paths.features={features}",
                       f"paths.model={run / 'model'}", f"paths.reports={run / 'reports'}"])
        write_params(cfg, run / "params.yaml")
        r = Run(name, [sys.executable, "-m", "kws.stages.train", "--params", str(run / "params.yaml")], run, env,
                run / "train.log").monitor()
        if r["rc"] != 0:
            print((run / "train.log").read_text()[-3000:], file=sys.stderr)
            raise SystemExit(f"train failed ({name}): {run / 'train.log'}")
        rows[name] = {k: r[k] for k in ("wall_s", "peak_rss_mb", "peak_pss_mb", "peak_main_rss_mb")}
        print(f"{name}: {rows[name]}", flush=True)
    print(table([[k, f"{v['peak_rss_mb'] / 1000:.2f}", f"{v['peak_pss_mb'] / 1000:.2f}",
                  f"{v['peak_main_rss_mb'] / 1000:.2f}", f"{v['wall_s']:.0f}"] for k, v in rows.items()],
                ["three models", "peak RSS GB (tree)", "peak PSS GB (tree)", "the stage alone GB", "s"]))
    write_result("train_memory.json", {"machine": machine_info(), "examples": {"train": args.train,
                                       "validation": args.validation}, "results": rows})
    shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
