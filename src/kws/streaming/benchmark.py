"""The stream benchmark: score generated streams through the service's predictor, sweep the
detector's settings, choose an operating point for a false-accept target, draw the DET curve.

Streams are scanned ONCE (the window scores of :meth:`kws.serving.predictor.Predictor.scan`,
exactly what long-audio ``/predict`` computes); each smoothing setting then averages those
scores once and the threshold sweep reruns only the detector's decisions
(:class:`kws.streaming.detector.SmoothedStream`); the chosen point is scored again by the
service's own detector (:meth:`Predictor.detect`).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kws.errors import ConfigError
from kws.streaming.detector import DetectorSettings, SmoothedStream
from kws.streaming.generate import Stream
from kws.streaming.matching import TOLERANCE_S, Found, Outcome, det_curve, match, pick_threshold

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """One stream's window scores."""

    stream: Stream
    starts: np.ndarray
    scores: np.ndarray


def score_streams(predictor, streams: Sequence[Stream], stride_s: float, desc: str | None = None) -> list[Scored]:
    """Every stream's window scores; with ``desc`` a progress bar (rate, ETA) over the streams, as
    the stage scans minutes of audio."""
    from tqdm import tqdm

    out = []
    for stream in tqdm(streams, desc=desc, unit="stream", disable=desc is None):
        if stream.sample_rate != predictor.cfg.sample_rate:
            raise ConfigError(f"stream at {stream.sample_rate} Hz, the model wants {predictor.cfg.sample_rate} Hz")
        starts, scores = predictor.scan(stream.samples, stride_s)
        out.append(Scored(stream, starts, scores))
    return out


def found(predictor, scored: Scored, settings: DetectorSettings) -> list[Found]:
    """The service's detections on one scored stream, at the window centre where each peaked,
    with the end of the window that decided each (when it was known)."""
    dets = predictor.detect(scored.starts, scored.scores, duration_s=scored.stream.duration_s, settings=settings)
    return [Found(d.keyword, d.start_s + predictor.window_s / 2, d.confidence, d.fired_s) for d in dets]


def outcome(predictor, scored: Sequence[Scored], settings: DetectorSettings,
            tolerance_s: float = TOLERANCE_S, max_latency_s: float | None = None) -> Outcome:
    total = Outcome()
    for s in scored:
        total += match(s.stream.truth, found(predictor, s, settings), s.stream.duration_s, tolerance_s, max_latency_s)
    return total


def curve(predictor, scored: Sequence[Scored], settings: DetectorSettings, thresholds: Sequence[float],
          tolerance_s: float = TOLERANCE_S, max_latency_s: float | None = None) -> list[dict[str, Any]]:
    """The DET curve (one row per threshold) of ``settings``' smoothing on these streams: each
    stream averaged once (:class:`SmoothedStream`, the detector's decisions at any threshold), as
    :func:`found` would detect at each threshold."""
    half = predictor.window_s / 2
    smoothed = [SmoothedStream(predictor.labels, settings, s.starts + half, s.scores) for s in scored]

    def detect(threshold: float, i: int) -> list[Found]:  # window centres -> as found() reports them
        return [Found(d.label, d.time_s, d.confidence, d.fired_s + half) for d in smoothed[i].detections(threshold)]

    return det_curve(thresholds, detect, [s.stream.truth for s in scored], [s.stream.duration_s for s in scored],
                     tolerance_s, max_latency_s)


def settings_grid(smoothing: dict[str, Sequence[Any]]) -> list[DetectorSettings]:
    """Every combination of the listed smoothing values (average_window_s, suppression_s, min_count)."""
    names = sorted(smoothing)
    values = [list(smoothing[n]) if isinstance(smoothing[n], (list, tuple)) else [smoothing[n]] for n in names]
    return [DetectorSettings.from_dict(dict(zip(names, combo))) for combo in itertools.product(*values)]


def choose(predictor, scored: Sequence[Scored], grid: Sequence[DetectorSettings], thresholds: Sequence[float],
           target_fa_per_hour: float, tolerance_s: float = TOLERANCE_S,
           max_latency_s: float | None = None) -> dict[str, Any]:
    """The operating point: over every smoothing setting and threshold, the best recall at or
    under the false-accept target. When none reaches it, the fewest false accepts (flagged).
    With ``max_latency_s``, recall counts only the hits known within that many seconds of their
    speech's end (``recall_on_time``): a long average that finds a word late loses to one that
    finds it in time."""
    best = None
    key_name = "recall" if max_latency_s is None else "recall_on_time"
    for settings in grid:
        rows = curve(predictor, scored, settings, thresholds, tolerance_s, max_latency_s)
        row = pick_threshold(rows, target_fa_per_hour, key_name)
        met = row is not None
        if not met:
            row = min(rows, key=lambda r: (r["false_accepts_per_hour"], -(r[key_name] or 0.0)))
        key = (met, row[key_name] or 0.0, -row["false_accepts_per_hour"], row["threshold"])
        log.info("%s: threshold %.2f -> %s %.3f at %.1f FA/h%s", settings.to_dict() | {"threshold": None},
                 row["threshold"], key_name, row[key_name] or 0.0, row["false_accepts_per_hour"],
                 "" if met else " (target missed)")
        if best is None or key > best[0]:
            best = (key, settings.replace(threshold=row["threshold"]), row, rows, met)
    _, settings, row, rows, met = best
    return {"settings": settings, "row": row, "curve": rows, "target_met": met}


def plot_det(curves: dict[str, list[dict[str, Any]]], points: dict[str, dict[str, Any]], path: str | Path,
             title: str, target_fa_per_hour: float, goal_recall: float | None = None,
             metadata: dict[str, str] | None = None) -> Path:
    """Miss rate vs false accepts per hour, one line per named curve, the operating points marked
    (a point's ``label`` names it; else its threshold does); ``goal_recall`` draws that recall's
    line, ``metadata`` goes into the PNG's text chunks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    for name, rows in curves.items():
        ok = [r for r in rows if r["false_accepts_per_hour"] is not None]
        line, = ax.plot([r["false_accepts_per_hour"] for r in ok], [r["miss_rate"] for r in ok], ".-", label=name)
        if name in points:
            p = points[name]
            ax.plot([p["false_accepts_per_hour"]], [p["miss_rate"]], "o", ms=9, mfc="none", color=line.get_color(),
                    label=p.get("label") or f"{name} at threshold {p['threshold']:.2f}")
    ax.axvline(target_fa_per_hour, color="grey", ls="--", lw=1, label=f"target {target_fa_per_hour:g} FA/h")
    if goal_recall is not None:
        ax.axhline(1 - goal_recall, color="grey", ls=":", lw=1, label=f"goal: {100 * goal_recall:g} % recall")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)  # a rate is never negative: no mirrored decades left of 0
    ax.set_xlabel("false accepts per hour")
    ax.set_ylabel("miss rate")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: never over a curve
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=metadata)
    plt.close(fig)
    return Path(path)


def promotion_record(stream_dir: str | Path) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """What promotion takes from the stream stage's reports in ``stream_dir``: the operating point
    (the bundle's ``detector.json``) and registry tags (test stream recall and false accepts per
    hour at it, and ``stream_key``: the identity of the test streams, so that two versions'
    figures are compared only when measured on the same streams). ``(None, {})`` without them."""
    import hashlib
    import json

    stream_dir = Path(stream_dir)
    point_file, metrics_file = stream_dir / "operating_point.json", stream_dir / "metrics.json"
    if not (point_file.is_file() and metrics_file.is_file()):
        return None, {}
    point, metrics = json.loads(point_file.read_text()), json.loads(metrics_file.read_text())
    DetectorSettings.from_dict(point["settings"])  # refuse to ship an invalid operating point
    identity = {"recipe": metrics["recipe"], "test": {k: metrics["streams"]["test"][k] for k in ("digest", "seeds")},
                "tolerance_s": metrics["operating_point"]["tolerance_s"]}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    test = metrics["test"]
    return point, {"stream_recall": f"{test['recall']:.6f}", "stream_fa_per_hour": f"{test['false_accepts_per_hour']:.3f}",
                   "stream_threshold": str(point["settings"]["threshold"]), "stream_key": key}
