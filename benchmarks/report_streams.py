"""The served recipe's stream figures pooled over the 5 speaker folds as one DET curve: a table
(``table_real_det``) and a figure (``figure_real_det``), both from ``real_variants.json``; and
the learning curve in speakers (``table_real_speakers``, ``figure_real_speakers``) from
``real_screen_speakers.json``. :mod:`report` writes them into the docs.

Each fold's test streams are scored at that fold's smoothing (chosen on its validation streams),
and one threshold is applied to all five folds: the curve is what a threshold gives on 50 minutes
of test audio. The threshold read off that curve for a budget is chosen ON THE TEST STREAMS, so it
is a ceiling to compare with, never an operating point: the operating point is each fold's own
validation choice, and the table's first column and the figure's rings are that.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
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


# --------------------------------------------------------------------------- the learning curve in speakers
#: each fold's training speakers at data.split.train_share=1: the pool's 172 speakers in 5 folds, 10 %
#: of the other speakers validation (kws.splits.split_speakers; tests/test_docs.py checks it on the pool)
TRAIN_SPEAKERS = (123, 123, 124, 124, 124)
SHARE = re.compile(r"^\+?data\.split\.train_share=([\d.]+)$")


def train_share(overrides: list[str]) -> float:
    return next((float(m.group(1)) for o in overrides if (m := SHARE.match(o))), 1.0)


def learning_curve() -> list[dict[str, Any]]:
    """One row per training-speaker share of ``real_screen_speakers.json``, fewest speakers first."""
    rows = []
    for name, c in result("real_screen_speakers")["candidates"].items():
        share, st = train_share(c["overrides"]), c["stream"]["tflite"]
        rows.append({"name": name, "share": share,
                     "speakers": sum(math.ceil(n * share) for n in TRAIN_SPEAKERS) / len(TRAIN_SPEAKERS),
                     "clips": c["ours"]["accuracy"], "unknown": c["ours"]["per_class"]["_unknown_"]["recall"],
                     "operating": (st["recall"], st["false_accepts_per_hour"]),
                     **{f"best{b:g}": best_recall(st["det"], b) for b in (10.0, 20.0)},
                     "most": max(r["recall"] for r in st["det"])})
    return sorted(rows, key=lambda r: r["speakers"])


def last_gain(rows: list[dict[str, Any]], key: str) -> float:
    """What ``key`` gained per doubling of the speakers between the two largest shares."""
    a, b = rows[-2], rows[-1]
    return (b[key] - a[key]) / math.log2(b["speakers"] / a["speakers"])


def speakers_for(rows: list[dict[str, Any]], key: str, goal: float) -> float | None:
    """Training speakers a fold at which ``key`` would reach ``goal`` if every further doubling gained
    what the last one did (``None``: it did not gain). Where the gains shrink with every doubling,
    as they have so far, it takes more: an extrapolation to compare with, not an estimate."""
    gain = last_gain(rows, key)
    return rows[-1]["speakers"] * 2 ** ((goal - rows[-1][key]) / gain) if gain > 0 else None


def table_real_speakers() -> str:
    rows = learning_curve()
    body = [[f"{r['speakers']:.1f} ({100 * r['share']:g} %)", pct(r["clips"]), pct(r["unknown"]),
             f"{pct(r['operating'][0])} @ {r['operating'][1]:.1f}", pct(r["best10"]), pct(r["best20"]), pct(r["most"])]
            for r in rows]
    gains = [100 * last_gain(rows[:i + 1], "best10") for i in range(1, len(rows))]
    need = speakers_for(rows, "best10", 0.9)
    return (md(["training speakers a fold (share)", "clips %", "`_unknown_` %", "test streams at the operating points",
                "best on test ≤ 10 FA/h %", "≤ 20 %", "most recall %"], body)
            + "\n\nOne TC-ResNet (float32), 5 folds, the same validation and test speakers and streams at every "
              "share. Each doubling of the training speakers added "
              + " then ".join(f"{g:.1f}" for g in gains) + " points at ≤ 10 FA/h"
              + (f"; were every further doubling to add as much as the last, 90 % would take {need:,.0f} training "
                 f"speakers a fold ({need / rows[-1]['speakers']:.1f} times the pool's). The gains have shrunk so "
                 "far; if they go on shrinking it takes more. An extrapolation, not a measurement."
                 if need else "."))


def figure_real_speakers() -> tuple[dict[str, Any], Callable[[Path, dict[str, str]], None]]:
    rows = learning_curve()
    keys = {"clips": "clip accuracy", "most": "streams: most recall (any threshold)",
            "best10": "streams: best on test at ≤ 10 FA/h"}
    data = {"rows": [{k: r[k] for k in ("speakers", *keys)} for r in rows], "goal": 0.9}

    def draw(path: Path, metadata: dict[str, str]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9.5, 4.5))
        xs = [r["speakers"] for r in rows]
        for key, label in keys.items():
            ax.plot(xs, [100 * r[key] for r in rows], "o-", label=label)
        need = speakers_for(rows, "best10", 0.9)
        if need:
            ext = [xs[-1], need]
            ax.plot(ext, [100 * rows[-1]["best10"], 90.0], "--", color="grey",
                    label="≤ 10 FA/h if every doubling gained what the last did: not measured")
        ax.axhline(90, color="grey", ls=":", lw=1, label="goal: 90 % recall at ≤ 10 FA/h")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs + ([need] if need else []))
        ax.set_xticklabels([f"{x:.0f}" for x in xs] + ([f"~{need:,.0f}"] if need else []))
        ax.set_xlabel("training speakers a fold (real speech)")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title("real speech, speakers held out: one TC-ResNet, 5 folds,\n"
                     "trained on a share of each fold's training speakers", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100, metadata=metadata)
        plt.close(fig)

    return data, draw


#: repo-relative PNG -> its figure function
FIGURES: dict[str, Callable[[], tuple[dict[str, Any], Callable[[Path, dict[str, str]], None]]]] = {
    "docs/figures/real_det.png": figure_real_det,
    "docs/figures/real_speakers.png": figure_real_speakers,
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
