"""Post-hoc candidates on the served recipe's fold models: no retraining, only a different answer rule.

For each of the 5 speaker folds, the recipe's model trained by ``bench_real.py`` on the other
speakers scores its held-out clips (out-of-fold scores, through the service's decoder and
predictor). Two post-hoc rules are measured against the plain argmax:

* **log-prior offsets** per class (or for ``_unknown_`` only), fitted by coordinate search on
  the OTHER folds' out-of-fold scores and applied to this fold (nested: no clip helps fit the
  offsets it is scored with), to maximize accuracy; and, on the served rule's scores (below),
  one offset for ``_unknown_`` maximizing either accuracy or the weakest class's recall (the
  goal is stated per class), and the service's own ``threshold`` (a top score below it answers
  ``_unknown_``) fitted the same way;
* **test-time shifts**: the clip shifted by 0 / ±50 ms (and ±100 ms), zero-padded like the
  training time shift, class scores averaged — with the latency that costs per clip;
* **ensembles** (``--ensemble NAME=OVERRIDES``): the served scores averaged with those of other
  cached fold models (another candidate of ``bench_real.py``, trained on the same folds), alone
  and with the nested ``_unknown_`` offset — what a served ensemble (or its distilled student, at
  best) could reach, before anyone builds one.

    .venv/bin/python benchmarks/bench_real.py --candidates recipe     # the fold models (cached)
    .venv/bin/python benchmarks/bench_posthoc.py [--models DIR0 DIR1 DIR2 DIR3 DIR4]

Without ``--models`` the fold models are where ``bench_real.py`` caches the recipe (its cache key
is the composed configuration: after a change to ``conf/``, pass the trained folders). The rules
assume models that answer by plain argmax: pass folds trained with ``train.logit_offsets=null``. Results:
``benchmarks/results/real_posthoc.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, write_result  # noqa: E402
from real_folds import compose_fold  # noqa: E402

log = logging.getLogger("bench_posthoc")
SHIFTS_MS = (0, -50, 50, -100, 100)
GRID = np.linspace(-2.0, 3.0, 26)
THRESHOLDS = np.round(np.arange(0.0, 0.95, 0.05), 2)
OFFSET_GRID = np.round(np.arange(0.0, 1.01, 0.1), 2)


def shift(wave: np.ndarray, samples: int) -> np.ndarray:
    """``wave`` moved by ``samples`` (positive: later), zero-padded, same length."""
    if samples > 0:
        return np.concatenate([np.zeros(samples, wave.dtype), wave[:-samples]])
    if samples < 0:
        return np.concatenate([wave[-samples:], np.zeros(-samples, wave.dtype)])
    return wave


def fold_scores(model_dir: Path, features_dir: Path, dataset: Path) -> dict:
    """Scores ``(n_clips, len(SHIFTS_MS), n_labels)`` of the fold's test clips, and the latency of 1 vs 3 windows."""
    from kws.audio import decode, fix_length
    from kws.serving.predictor import Predictor

    pred = Predictor(model_dir)
    labels = json.loads((features_dir / "meta.json").read_text())["labels"]
    with np.load(features_dir / "test.npz") as d:
        files, y = [str(f) for f in d["files"]], d["y"].astype(int)
    n = pred.cfg.clip_samples
    scores, lat1, lat3 = [], [], []
    for f in files:
        audio = decode((dataset / f).read_bytes(), pred.cfg.sample_rate, 60.0).samples
        t0 = time.perf_counter()
        wave = fix_length(pred.loudest_window(audio), n)
        rows = [pred.runtime.infer(pred.features(wave[None]))[0]]
        lat1.append(time.perf_counter() - t0)
        for ms in SHIFTS_MS[1:]:
            rows.append(pred.runtime.infer(pred.features(shift(wave, int(ms * pred.cfg.sample_rate / 1000))[None]))[0])
            if ms == SHIFTS_MS[2]:
                lat3.append(time.perf_counter() - t0)
        scores.append(rows)
    return {"labels": labels, "y": y, "scores": np.asarray(scores), "lat1": lat1, "lat3": lat3}


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(pred == y))


def min_recall(y: np.ndarray, pred: np.ndarray) -> float:
    """The weakest class's recall: the objective of a goal stated per class ("every class ≥ 85 %")."""
    return min(float(np.mean(pred[y == c] == c)) for c in np.unique(y))


def fit_offsets(logp: np.ndarray, y: np.ndarray, classes: list[int], rounds: int = 3, objective=accuracy) -> np.ndarray:
    """Per-class additive log-prior offsets maximizing ``objective``, by coordinate search over GRID."""
    b = np.zeros(logp.shape[1])
    for _ in range(rounds):
        for c in classes:
            scores = []
            for v in GRID:
                trial = b.copy()
                trial[c] = v
                scores.append(objective(y, np.argmax(logp + trial, 1)))
            b[c] = GRID[int(np.argmax(scores))]  # first best: the smallest offset that reaches it
    return b


def summary(labels: list[str], y: np.ndarray, pred: np.ndarray) -> dict:
    from kws.scoring.summary import wilson

    per = {labels[c]: float(np.mean(pred[y == c] == c)) for c in range(len(labels)) if np.any(y == c)}
    k = int(np.sum(pred == y))
    return {"accuracy": k / len(y), "ci95": list(wilson(k, len(y))), "min_recall": min(per.values()), "recall": per}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs=5, type=Path, help="the 5 fold model folders (default: bench_real's cache)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("KWS_BENCH_CACHE", "/tmp/kws-bench")) / "real")
    parser.add_argument("--out", default="real_posthoc.json")
    parser.add_argument("--ensemble", nargs="*", default=[], metavar="NAME=OVERRIDES",
                        help="members averaged with the recipe, as bench_real.py --extra names them "
                             "(trained there first): 'recipe_synth_w05=data.extra.0.weight=0.5;train.logit_offsets=null'")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    members = {"recipe": []}
    for spec in args.ensemble:
        name, _, overrides = spec.partition("=")
        members[name] = [o for o in overrides.split(";") if o]
    by_member = {}
    for name, overrides in members.items():
        by_member[name] = []
        for k in range(5):
            cfg = compose_fold(overrides, k, args.work, name)
            model_dir = args.models[k] if args.models and name == "recipe" else Path(cfg.paths.model)
            if not (model_dir / "model.tflite").is_file():
                print(f"no trained fold model for {name} at {model_dir}: run `bench_real.py --candidates recipe` "
                      "(or --extra NAME=OVERRIDES) first, or pass --models", file=sys.stderr)
                return 2
            log.info("%s fold %d: %s", name, k, model_dir)
            by_member[name].append(fold_scores(model_dir, Path(cfg.paths.features), Path(cfg.paths.dataset))
                                   | {"model": str(model_dir)})
            if not np.array_equal(by_member[name][k]["y"], by_member["recipe"][k]["y"]):
                print(f"{name} fold {k} was tested on other clips than the recipe's", file=sys.stderr)
                return 2
    folds = by_member.pop("recipe")
    labels = folds[0]["labels"]
    y_all = np.concatenate([f["y"] for f in folds])
    logp = [np.log(f["scores"] + 1e-9) for f in folds]

    results = {"plain argmax": summary(labels, y_all, np.concatenate([np.argmax(lp[:, 0], 1) for lp in logp]))}
    unknown = labels.index("_unknown_")
    ys = [f["y"] for f in folds]

    def nested(scores: list[np.ndarray], fit, decide) -> tuple[np.ndarray, list]:
        """Each fold decided with what ``fit`` learns from the OTHER folds' scores and labels."""
        preds, fitted = [], []
        for k in range(5):
            others = [j for j in range(5) if j != k]
            param = fit(np.concatenate([scores[j] for j in others]), np.concatenate([ys[j] for j in others]))
            fitted.append(param)
            preds.append(decide(scores[k], param))
        return np.concatenate(preds), fitted

    # the served rule's scores: the clip and its ±50 ms shifts averaged (KWS_TTA_SHIFTS_MS' default)
    probs = [f["scores"][:, :3].mean(1) for f in folds]
    served = [np.log(p + 1e-9) for p in probs]
    rules = (("offset for _unknown_ (nested)", [unknown], [lp[:, 0] for lp in logp], accuracy),
             ("offsets per class (nested)", list(range(len(labels))), [lp[:, 0] for lp in logp], accuracy),
             ("served + offset for _unknown_, max accuracy (nested)", [unknown], served, accuracy),
             ("served + offset for _unknown_, max min-recall (nested)", [unknown], served, min_recall))

    def offset_rule(scores: list[np.ndarray], classes: list[int], objective) -> dict:
        """Log-prior offsets for ``classes`` added to ``scores``, fitted nested for ``objective``."""
        preds, offsets = nested(scores, lambda s, y: fit_offsets(s, y, classes, objective=objective),
                                lambda s, b: np.argmax(s + b, 1))
        return summary(labels, y_all, preds) | {"offsets_per_fold": [b.round(2).tolist() for b in offsets]}

    for name, classes, scores, objective in rules:
        results[name] = offset_rule(scores, classes, objective)
    # the service's own knob (`threshold`, the API's ?threshold=): a top score below it answers
    # _unknown_; a threshold per fold fitted on the other folds for the weakest class's recall
    with_threshold = lambda p, th: np.where(p.max(1) < th, unknown, np.argmax(p, 1))  # noqa: E731
    preds, thresholds = nested(
        probs, lambda p, y: float(max(THRESHOLDS, key=lambda v: (min_recall(y, with_threshold(p, v)), -v))),  # ties: lowest
        with_threshold)
    results["served + threshold, max min-recall (nested)"] = (summary(labels, y_all, preds)
                                                              | {"threshold_per_fold": thresholds})
    # as `train.logit_offsets` serves it: the offset added to each window's logits (softmax(log p + b)),
    # then the windows averaged; one offset for _unknown_ on OFFSET_GRID, fitted nested for the
    # weakest class's recall (ties: the smallest). The median of the folds' picks is conf/'s default.
    def baked(s: np.ndarray, b: float) -> np.ndarray:
        lp = np.log(s[:, :3] + 1e-9)
        lp[..., unknown] += b
        p = np.exp(lp)
        return np.argmax((p / p.sum(-1, keepdims=True)).mean(1), 1)

    raw = [f["scores"] for f in folds]
    preds, picks = nested(raw, lambda s, y: float(max(OFFSET_GRID, key=lambda v: (min_recall(y, baked(s, v)), -v))),
                          baked)
    results["served + train.logit_offsets for _unknown_, max min-recall (nested)"] = (
        summary(labels, y_all, preds) | {"offset_per_fold": picks, "median_offset": float(np.median(picks))})
    for name, member in by_member.items():
        averaged = [(p + m["scores"][:, :3].mean(1)) / 2 for p, m in zip(probs, member)]
        results[f"ensemble with {name}"] = summary(labels, y_all, np.concatenate([np.argmax(p, 1) for p in averaged]))
        results[f"ensemble with {name} + offset for _unknown_, max min-recall (nested)"] = offset_rule(
            [np.log(p + 1e-9) for p in averaged], [unknown], min_recall)
    for name, n_shifts in (("shifts 0, ±50 ms", 3), ("shifts 0, ±50, ±100 ms", 5)):
        preds = np.concatenate([np.argmax(f["scores"][:, :n_shifts].mean(1), 1) for f in folds])
        results[name] = summary(labels, y_all, preds)
    lat = {"1 window": float(np.percentile(sum((f["lat1"] for f in folds), []), 50) * 1000),
           "3 windows": float(np.percentile(sum((f["lat3"] for f in folds), []), 50) * 1000)}

    width = max(map(len, results))
    print(f"{'rule':{width}s} {'accuracy [95% CI]':>22s} {'min recall':>10s} {'_unknown_':>9s} {'go':>6s}")
    for name, r in results.items():
        print(f"{name:{width}s} {r['accuracy']:.4f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] {r['min_recall']:10.3f} "
              f"{r['recall']['_unknown_']:9.3f} {r['recall']['go']:6.3f}")
    print(f"latency p50 (features + TFLite, after decoding): 1 window {lat['1 window']:.2f} ms, "
          f"3 windows {lat['3 windows']:.2f} ms")
    write_result(args.out, {"machine": machine_info(), "n": int(len(y_all)), "rules": results, "latency_p50_ms": lat,
                            "models": [f["model"] for f in folds],
                            "ensemble_members": {n: [m["model"] for m in ms] for n, ms in by_member.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
