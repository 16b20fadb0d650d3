"""The served recipe's stream figures pooled over the 5 speaker folds as one DET curve: a table
(``table_real_det``) and a figure (``figure_real_det``), both from ``real_variants.json``;
:mod:`report` writes them into the docs.

Each fold's test streams are scored at that fold's smoothing (chosen on its validation streams),
and one threshold is applied to all five folds: the curve is what a threshold gives on 50 minutes
of test audio. The threshold read off that curve for a budget is chosen ON THE TEST STREAMS, so it
is a ceiling to compare with, never an operating point: the operating point is each fold's own
validation choice, and the table's first column and the figure's rings are that.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import yaml
from report_tables import REPO, md, pct, result

#: false-accept budgets (per hour) and recall goals the table reads off the pooled curve
BUDGETS = (6.0, 10.0, 20.0, 60.0)
GOALS = (0.80, 0.85, 0.90)
NAMES = {"tflite": "ours, float32", "tflite_int8": "ours, int8", "original": "original model (its own features)"}


def _streams() -> dict[str, dict]:
    """runtime -> the pooled test streams of ``bench_real.py --variants`` that kept their DET curve."""
    r = result("real_variants")["candidates"]["recipe"]
    return {rt: st for rt, st in r["stream"].items() if st.get("det")}


def _stream_conf() -> dict:
    """``conf/stream``: the false-accept target and the threshold sweep the curves were measured with."""
    return yaml.safe_load((REPO / "conf" / "stream" / "default.yaml").read_text())


def best_recall(det: list[dict], budget: float) -> float | None:
    """The best recall of the curve at or under ``budget`` false accepts per hour (``None``: none is)."""
    ok = [r["recall"] for r in det if r["false_accepts_per_hour"] <= budget]
    return max(ok) if ok else None


def fa_for_recall(det: list[dict], goal: float) -> float | None:
    """The fewest false accepts per hour at which the curve reaches ``goal`` recall (``None``: never)."""
    ok = [r["false_accepts_per_hour"] for r in det if r["recall"] >= goal]
    return min(ok) if ok else None


def table_real_det() -> str:
    streams = _streams()
    if not streams:
        return "(no DET curves in `real_variants.json`: rerun `bench_real.py --candidates recipe --variants`)"
    rows = []
    for rt, st in streams.items():
        det = st["det"]
        rows.append([NAMES.get(rt, rt), f"{pct(st['recall'])} @ {st['false_accepts_per_hour']:.1f}",
                     *(pct(best_recall(det, b)) for b in BUDGETS),
                     *(("–" if (fa := fa_for_recall(det, g)) is None else f"{fa:.1f}") for g in GOALS),
                     pct(max(r["recall"] for r in det))])
    minutes = next(iter(streams.values()))["hours"] * 60
    sweep = _stream_conf()["thresholds"]
    return (md(["test streams, 5 folds pooled", "operating points (validation): recall % @ FA/h",
                *(f"best on test ≤ {b:g} FA/h %" for b in BUDGETS),
                *(f"FA/h for {100 * g:g} % recall" for g in GOALS), "most recall %"], rows)
            + f"\n\n{minutes:.0f} minutes of test streams; one false accept is {60 / minutes:.1f} per hour. "
              "\"Best on test\" and \"FA/h for\" read the pooled curve (one threshold for all folds, each at its "
              "own smoothing) with the threshold chosen on the test streams: a ceiling, not an operating point. "
              f"– : no threshold of the sweep ({sweep['start']:.2f}–{sweep['stop']:.2f}) reaches it.")


def figure_real_det() -> tuple[dict[str, Any], Callable[[Path, dict[str, str]], None]]:
    """What the figure shows (its digest says whether the PNG is stale) and how to draw it."""
    streams = _streams()
    curves = {NAMES.get(rt, rt): [{k: r[k] for k in ("false_accepts_per_hour", "miss_rate")} for r in st["det"]]
              for rt, st in streams.items()}
    points = {NAMES.get(rt, rt): {"false_accepts_per_hour": st["false_accepts_per_hour"], "miss_rate": 1 - st["recall"],
                                  "label": f"{NAMES.get(rt, rt)}: the folds' operating points"}
              for rt, st in streams.items()}
    target = float(_stream_conf()["target_fa_per_hour"])
    minutes = next(iter(streams.values()))["hours"] * 60 if streams else 0.0
    data = {"curves": curves, "points": points, "target": target, "minutes": minutes}

    def draw(path: Path, metadata: dict[str, str]) -> None:
        from kws.streaming.benchmark import plot_det

        title = (f"real speech, speakers held out: the 5 folds' test streams pooled ({minutes:.0f} min)\n"
                 "one threshold for all folds; rings: each fold at its validation-chosen operating point")
        plot_det(curves, points, path, title, target, goal_recall=0.9, metadata=metadata)

    return data, draw


#: repo-relative PNG -> its figure function
FIGURES: dict[str, Callable[[], tuple[dict[str, Any], Callable[[Path, dict[str, str]], None]]]] = {
    "docs/figures/real_det.png": figure_real_det,
}
SOURCE_KEY = "Source"  # the PNG text chunk holding the digest of what it was drawn from


def digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def drawn_from(path: Path) -> str | None:
    """The digest a PNG written by :func:`write_figures` records (``None``: none, or not a PNG)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return (getattr(im, "text", None) or {}).get(SOURCE_KEY)
    except (OSError, UnidentifiedImageError):
        return None


def _stale():
    """``(path, digest, draw)`` for every figure missing or drawn from other figures than the results give."""
    for rel, figure in FIGURES.items():
        data, draw = figure()
        if drawn_from(REPO / rel) != (want := digest(data)):
            yield rel, want, draw


def stale_figures() -> list[str]:
    """``path: figure`` for every stale figure."""
    return [f"{rel}: figure" for rel, _, _ in _stale()]


def write_figures() -> list[str]:
    """Draw every stale figure; the repo-relative paths drawn."""
    drawn = []
    for rel, want, draw in list(_stale()):
        path = REPO / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        draw(path, {SOURCE_KEY: want})
        drawn.append(rel)
    return drawn
