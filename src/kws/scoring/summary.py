"""The figures of a scoring run: accuracy and per-class recall with 95 % Wilson intervals, the
confusions, the errors, the latency and the throughput.

Invariant of a result: ``correct + sum(confusion counts) + len(errors) == n``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

Row = tuple[str | None, str | None, float]  # (predicted label, error message, seconds) of one clip


def wilson(k: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of ``k`` successes in ``n`` trials ((0, 1) when ``n`` is 0)."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(max(0.0, ci.low)), float(min(1.0, ci.high))


def _per_class(predictions: list[dict], labels: Sequence[str]) -> dict:
    order = list(labels) + sorted({p["true"] for p in predictions} - set(labels))
    out = {}
    for label in order:
        rows = [p for p in predictions if p["true"] == label]
        if rows:
            k = sum(p["predicted"] == label for p in rows)
            out[label] = {"n": len(rows), "correct": k, "recall": k / len(rows), "ci95": list(wilson(k, len(rows)))}
    return out


def _confusions(predictions: list[dict]) -> list[dict]:
    pairs = Counter((p["true"], p["predicted"]) for p in predictions
                    if p["predicted"] is not None and p["predicted"] != p["true"])
    return [{"true": t, "predicted": q, "count": c} for (t, q), c in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))]


def summarize(items: Sequence[tuple[Path, str]], rows: Sequence[Row], labels: Sequence[str], seconds: float) -> dict:
    """The result of scoring ``items`` (``(path, true label)``): ``rows`` holds ``(predicted, error
    message, seconds)`` of each, ``seconds`` is the wall time of the whole run."""
    predictions, errors, latencies = [], [], []
    for (path, true), (pred, message, took) in zip(items, rows, strict=True):
        if message is not None:
            errors.append({"file": str(path), "true": true, "message": message})
            pred = None
        else:
            latencies.append(took * 1000.0)
        predictions.append({"file": str(path), "true": true, "predicted": pred})
    n = len(predictions)
    correct = sum(p["predicted"] == p["true"] for p in predictions)
    lat = ({"p50": float(np.percentile(latencies, 50)), "p95": float(np.percentile(latencies, 95))} if latencies
           else {"p50": None, "p95": None})
    return {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0, "ci95": list(wilson(correct, n)),
            "per_class": _per_class(predictions, labels), "confusions": _confusions(predictions), "errors": errors,
            "latency_ms": lat, "seconds": round(seconds, 3),
            "clips_per_s": round(n / seconds, 1) if seconds > 0 else None,
            "labels": list(labels), "predictions": predictions}
