"""``bench_real.py``'s folds pooled (every clip of the pool is a test clip once, every fold's test
streams one long recording), its per-clip sidecar, and its console report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from _common import table

#: what a fold's stream figures keep: enough to pool the folds' streams as one (:func:`pooled_stream`)
STREAM_KEYS = ("recall", "recall_on_time", "false_accepts_per_hour", "false_accepts", "wrong_words", "hits",
               "keywords_said", "hours", "late", "latency_s")


def det_rows(curve: list[dict]) -> list[list]:
    """A fold's test DET curve (``kws.streaming.matching.det_curve``'s rows) as
    ``[threshold, hits, false accepts]``: the counts that pool over folds (:func:`pooled_det`)."""
    return [[r["threshold"], r["hits"], r["false_accepts"]] for r in curve]


def pooled_det(rows: list[dict]) -> list[dict] | None:
    """The folds' test streams as one recording, threshold by threshold: each fold at its own
    chosen smoothing, one threshold for all of them. ``None`` unless every fold kept its curve."""
    if not rows or not all("det" in r for r in rows):
        return None
    said, hours = sum(r["keywords_said"] for r in rows), sum(r["hours"] for r in rows)
    counts: dict[float, list[int]] = {}  # threshold -> [hits, false accepts, folds]
    for r in rows:
        for thr, hits, fas in r["det"]:
            c = counts.setdefault(float(thr), [0, 0, 0])
            c[0], c[1], c[2] = c[0] + hits, c[1] + fas, c[2] + 1
    return [{"threshold": thr, "recall": hits / said, "miss_rate": 1 - hits / said, "false_accepts": fas,
             "false_accepts_per_hour": fas / hours}
            for thr, (hits, fas, n) in sorted(counts.items()) if n == len(rows)]


def pooled_stream(folds: list[dict], runtime: str) -> dict:
    """Test streams of every fold as one: recall and false accepts per hour over all of them, and
    (where the folds kept their curves) the pooled DET curve."""
    rows = [f["stream"][runtime] for f in folds]
    hits, said = sum(r["hits"] for r in rows), sum(r["keywords_said"] for r in rows)
    late, fas, hours = sum(r["late"] for r in rows), sum(r["false_accepts"] for r in rows), sum(r["hours"] for r in rows)
    out = {"recall": hits / said, "recall_on_time": (hits - late) / said, "false_accepts_per_hour": fas / hours,
           "false_accepts": fas, "wrong_words": sum(r["wrong_words"] for r in rows), "keywords_said": said, "hours": hours,
           "latency_max_s": max((r["latency_s"].get("max", 0.0) or 0.0) for r in rows),
           "per_fold": [{k: r[k] for k in ("recall", "false_accepts_per_hour", "settings")} for r in rows]}
    if (det := pooled_det(rows)) is not None:
        out["det"] = det
    return out


def slim(result: dict) -> tuple[dict, list]:
    """``score``'s result without its per-clip rows, and those rows as ``[folder/file, true, predicted]``
    (the rows go to the git-ignored sidecar, :func:`write_clips`; the summary keeps the counts that
    :func:`pooled` needs)."""
    rows = [[Path(p["file"]).parent.name + "/" + Path(p["file"]).name, p["true"], p["predicted"]]
            for p in result["predictions"]]
    return {k: v for k, v in result.items() if k != "predictions"}, rows


COMPACT_NOTE = ("per-fold DET rows and per-fold variants dropped to keep the file small; "
                "the pooled ones are each candidate's stream.<runtime>.det and variants")


def compact(results: dict) -> dict:
    """A result file for git: each fold without its DET rows and variants, which the candidate's
    pooled ``stream`` and ``variants`` keep (a screen's five folds would pass the size limit)."""
    out = {**results, "candidates": {}, "note": COMPACT_NOTE}
    for name, entry in results["candidates"].items():
        folds = [{**{k: v for k, v in f.items() if k != "variants"},
                  "stream": {rt: {k: v for k, v in st.items() if k != "det"} for rt, st in f.get("stream", {}).items()}}
                 for f in entry["per_fold"]]
        out["candidates"][name] = {**entry, "per_fold": folds}
    return out


def clips_path(out_path: Path) -> Path:
    """The per-clip sidecar of a result file: ``results/clips/<name>.json`` (git-ignored)."""
    return out_path.parent / "clips" / out_path.name


def write_clips(out_path: Path, name: str, folds: list[dict]) -> None:
    """Merge this run's per-clip rows (``candidate -> fold -> rows``) into the sidecar of ``out_path``."""
    path = clips_path(out_path)
    clips = json.loads(path.read_text()) if path.is_file() else {}
    for f in folds:
        if "clips" in f:
            clips.setdefault(name, {})[str(f["fold"])] = f.pop("clips")
    if clips:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(clips) + "\n")


# --------------------------------------------------------------------------- pooling
def pooled(folds: list[dict], who: str) -> dict:
    """The folds' test clips as one pool, from each fold's per-class counts (``n``, ``correct``)."""
    from kws.labels import SILENCE
    from kws.scoring.summary import wilson

    counts = {}  # label -> [clips, correct] over the folds
    for f in folds:
        for label, c in f[who]["per_class"].items():
            counts.setdefault(label, [0, 0])
            counts[label][0] += c["n"]
            counts[label][1] += c["correct"]
    per_class = {label: {"n": n, "recall": c / n, "ci95": list(wilson(c, n))}
                 for label, (n, c) in sorted(counts.items())}
    n, k = sum(f[who]["n"] for f in folds), sum(f[who]["correct"] for f in folds)
    n2 = sum(n for label, (n, _) in counts.items() if label != SILENCE)
    k2 = sum(c for label, (_, c) in counts.items() if label != SILENCE)
    accs = [f[who]["accuracy"] for f in folds]
    lat = [f[who]["latency_ms"]["p50"] for f in folds if f[who]["latency_ms"]["p50"] is not None]
    return {
        "n": n, "accuracy": k / n, "ci95": list(wilson(k, n)),
        "fold_accuracy_mean": float(np.mean(accs)), "fold_accuracy_std": float(np.std(accs)),
        "accuracy_without_silence": k2 / n2, "ci95_without_silence": list(wilson(k2, n2)),
        "per_class": per_class, "min_recall": min(v["recall"] for v in per_class.values()),
        "latency_p50_ms": float(np.median(lat)) if lat else None,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def report(results: dict) -> None:
    """The console table, then the same as Markdown (the docs' tables come from ``benchmarks/report.py``)."""
    rows, md = [], []
    for name, e in results["candidates"].items():
        o, g = e["ours"], e["original"]
        pc = o["per_class"]
        md.append(f"| {name} | {len(e['folds'])} | {o['n']} | **{_pct(o['accuracy'])}** [{_pct(o['ci95'][0])}, "
                  f"{_pct(o['ci95'][1])}] | {_pct(o['min_recall'])} | {_pct(pc['_unknown_']['recall'])} | "
                  f"{_pct(pc['_silence_']['recall'])} | "
                  + (f"{_pct(g['accuracy'])} [{_pct(g['ci95'][0])}, {_pct(g['ci95'][1])}] | "
                     f"{_pct(g['accuracy_without_silence'])} |" if g else "– | – |")
                  + f" {e['params_count']:,} | {e['train_seconds_per_fold'] / 60:.1f} |")
        o, g = e["ours"], e["original"]
        rows.append([name, len(e["folds"]), o["n"], f"{o['accuracy']:.3f} [{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}]",
                     f"{o['min_recall']:.3f}", f"{o['per_class'].get('_unknown_', {}).get('recall', float('nan')):.3f}",
                     f"{o['per_class'].get('_silence_', {}).get('recall', float('nan')):.3f}",
                     f"{g['accuracy']:.3f}" if g else "-", f"{g['accuracy_without_silence']:.3f}" if g else "-",
                     f"{o['latency_p50_ms']:.2f}" if o["latency_p50_ms"] else "-", e["params_count"]])
    print(table(rows, ["candidate", "folds", "clips", "accuracy [95% CI]", "min recall", "unknown", "silence",
                       "original", "orig. w/o silence", "p50 ms", "params"]))
    print("\n| candidate | folds | clips | accuracy % [95 % CI] | min class recall | `_unknown_` | `_silence_` "
          "| original model, same clips | original w/o silence | params | train min/fold |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(md))
    for name, e in results["candidates"].items():
        for v, o in e.get("variants", {}).items():
            print(f"{name}, {v}: {_pct(o['accuracy'])} % [{_pct(o['ci95'][0])}, {_pct(o['ci95'][1])}], weakest class "
                  f"{_pct(o['min_recall'])}, p50 {o['latency_p50_ms']:.2f} ms")
        for rt, st in e.get("stream", {}).items():
            print(f"{name}, streams, {rt}: recall {_pct(st['recall'])} % ({_pct(st['recall_on_time'])} % in time) at "
                  f"{st['false_accepts_per_hour']:.1f} FA/h over {st['hours']:.2f} h, latest {st['latency_max_s']:.2f} s")
    for name, e in results["candidates"].items():
        print(f"{name} per class: " + ", ".join(f"{k} {_pct(v['recall'])}" for k, v in e["ours"]["per_class"].items()))
