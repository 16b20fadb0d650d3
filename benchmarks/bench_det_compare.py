"""Models compared at equal false accepts on one fold's TEST streams: is it the model or the
operating point's choice that limits stream recall?

For each model (and the original one, with its own front end), on the very same streams of the
stream stage's recipe (``conf/stream``; the fold's ``validation_examples.json`` and
``test_examples.json``):

* **best on test**: over the whole smoothing x threshold sweep, the best keyword recall with at most
  3, 6, 10, 20, 30, 60 false accepts per hour ON THE TEST STREAMS. Choosing on test is for this
  comparison only (what each model could give at that budget if its operating point were chosen
  perfectly); it is never an operating point and never a figure to quote as one;
* **chosen on validation**: the operating point the stream stage would choose (validation
  streams, ``target_fa_per_hour``, ``max_latency_s``) and the test figures at it, as
  ``bench_real.py`` reports.

A model whose best-on-test recall at 10 false accepts per hour is already far under the target
needs a better model, not a better choice; one whose validation-chosen point lands far from its
best-on-test one needs a validation split that predicts test better.

    .venv/bin/python benchmarks/bench_det_compare.py --project /tmp/mj10/kws \\
        served=/tmp/mj10/kws/data/model end_aligned=/tmp/kws-bench/models/4f3d399d58cba268/fold0

``--project`` is the checkout whose ``data/features`` (``--features``) lists the fold's clips
(its relative paths are read from there). Writes ``benchmarks/results/real_det_compare.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, machine_info, table, write_result  # noqa: E402

BUDGETS = (3, 6, 10, 20, 30, 60)  # false accepts per hour


def best_on_test(pred, scored, grid, sweep, tolerance_s: float) -> dict[int, dict]:
    """Per budget: the best test recall over every setting and threshold, and where it is (the
    stream stage's own :func:`~kws.streaming.matching.pick_threshold` on each setting's curve)."""
    from kws.streaming import benchmark as bm
    from kws.streaming.matching import pick_threshold

    best = {b: {"recall": 0.0, "false_accepts_per_hour": None, "settings": None} for b in BUDGETS}
    for settings in grid:
        rows = bm.curve(pred, scored, settings, sweep, tolerance_s)
        for b in BUDGETS:
            row = pick_threshold(rows, b)
            if row is not None and (row["recall"] or 0.0) > best[b]["recall"]:
                best[b] = {"recall": row["recall"], "false_accepts_per_hour": row["false_accepts_per_hour"],
                           "settings": settings.replace(threshold=row["threshold"]).to_dict()}
    return best


def compare(pred, val, test, sc) -> dict:
    """One model on the fold's streams: best on test per budget, and the validation choice."""
    from omegaconf import OmegaConf

    from kws.stages.stream import thresholds
    from kws.streaming import benchmark as bm

    stride, tol = float(sc.stride_s), float(sc.tolerance_s)
    late = None if sc.get("max_latency_s") is None else float(sc.max_latency_s)
    grid, sweep = bm.settings_grid(OmegaConf.to_container(sc.smoothing, resolve=True)), thresholds(sc.thresholds)
    val_scored, test_scored = bm.score_streams(pred, val, stride), bm.score_streams(pred, test, stride)
    chosen = bm.choose(pred, val_scored, grid, sweep, float(sc.target_fa_per_hour), tol, late)
    at = bm.outcome(pred, test_scored, chosen["settings"], tol).summary()
    return {"best_on_test": best_on_test(pred, test_scored, grid, sweep, tol),
            "chosen_on_validation": {"settings": chosen["settings"].to_dict(), "target_met": chosen["target_met"],
                                     "validation_recall": chosen["row"]["recall"],
                                     "validation_false_accepts_per_hour": chosen["row"]["false_accepts_per_hour"],
                                     "test_recall": at["recall"], "test_false_accepts_per_hour": at["false_accepts_per_hour"]}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="NAME=BUNDLE_DIR (a fold's model directory or a bundle)")
    ap.add_argument("--project", type=Path, required=True, help="checkout whose data/features list the fold's clips")
    ap.add_argument("--features", type=Path, default=Path("data/features"), help="features dir, relative to --project")
    ap.add_argument("--fold", default="0", help="the fold these streams are (recorded with the figures)")
    ap.add_argument("--runtimes", default="tflite,tflite_int8")
    ap.add_argument("--no-original", action="store_true", help="skip the original model")
    ap.add_argument("--output", default="real_det_compare.json")
    args = ap.parse_args(argv)
    models = [m.split("=", 1) for m in args.models]
    if any(len(m) != 2 or not Path(m[1]).is_dir() for m in models):
        ap.error("each model is NAME=DIR with an existing DIR")

    from omegaconf import OmegaConf

    from kws.serving.predictor import Predictor
    from kws.stages.stream import split_streams

    sc = OmegaConf.load(REPO / "conf" / "stream" / "default.yaml")
    models = [(name, Path(d).resolve()) for name, d in models]
    os.chdir(args.project)  # the examples lists name clips relative to the project
    val, val_info = split_streams(args.features, "validation", sc, 16000)
    test, test_info = split_streams(args.features, "test", sc, 16000)
    print(f"streams: validation {val_info['minutes']:g} min, test {test_info['minutes']:g} min "
          f"({test_info['words']} words from {test_info['clips']} clips)", flush=True)
    rows, out = [], {}
    candidates = [(f"{name}/{rt}", lambda d=d, rt=rt: Predictor(d, runtime=rt, warmup=False))
                  for name, d in models for rt in args.runtimes.split(",")]
    if not args.no_original:
        from real_original import OriginalModel, OriginalStreams
        from kws.bundle import read_meta

        labels = list(read_meta(models[0][1]).labels)
        candidates.append(("original model (its own features)", lambda: OriginalStreams(OriginalModel(), labels)))
    for name, make in candidates:
        res = out[name] = compare(make(), val, test, sc)
        ch = res["chosen_on_validation"]
        rows.append([name, *(f"{100 * res['best_on_test'][b]['recall']:.1f}" for b in BUDGETS),
                     f"{100 * ch['test_recall']:.1f} @ {ch['test_false_accepts_per_hour']:.0f}"])
        print(table(rows[-1:], ["model", *(f"@{b}" for b in BUDGETS), "chosen on validation"]), flush=True)
    print(table(rows, ["model", *(f"best on test @ {b} FA/h %" for b in BUDGETS), "chosen on validation: test % @ FA/h"]))
    write_result(args.output, {
        "what": "models at equal false accepts on one fold's test streams: best recall over the sweep chosen ON TEST "
                "(a model comparison, never an operating point) beside the operating point chosen on validation",
        "machine": machine_info(), "fold": args.fold, "budgets_fa_per_hour": list(BUDGETS),
        "streams": {"validation": val_info, "test": test_info},
        "recipe": OmegaConf.to_container(sc, resolve=True), "models": {n: str(d) for n, d in models}, "results": out})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
