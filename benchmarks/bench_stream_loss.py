"""Where a model's stream recall goes: for every keyword said in a split's streams (the stream
stage's own recipe, ``conf/stream``), the same clip answered three ways by the service's predictor:

* **clean**: the clip file alone (what clip accuracy measures);
* **in noise, aligned**: the one-second window of the stream that is exactly the clip, now under
  the stream's background at the word's SNR (what noise alone costs);
* **in the stream**: the keyword's best smoothed score over the windows near the word (what the
  detector sees; the share at or over a threshold is the recall that threshold allows).

And for the other words: the share whose best keyword score near them reaches each threshold
(each one a false accept at that threshold). Per background recording and per keyword, so that
a training change can be aimed at what loses the most.

    .venv/bin/python benchmarks/bench_stream_loss.py --features F --model M --out stream_loss.json

``F`` and ``M`` are a fold's prepared features and model (``bench_real.py`` caches them under
``/tmp/kws-bench/real``) or the pipeline's ``data/features`` and ``data/model``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, machine_info, table, write_result  # noqa: E402

THRESHOLDS = (0.5, 0.6, 0.7, 0.8)
AVERAGE_S = 0.125  # the smoothing the fold streams' operating points chose (conf/stream's sweep)


def word_rows(pred, stream, stride_s: float, tolerance_s: float, average_s: float) -> list[dict]:
    """One row per word of ``stream``: its clean, aligned and in-stream answers."""
    from kws.audio import load_file

    labels, rate = pred.labels, stream.sample_rate
    keywords = [i for i, name in enumerate(labels) if not name.startswith("_")]
    starts, scores = pred.scan(stream.samples, stride_s)
    centres = starts + pred.window_s / 2
    span = max(1, int(round(average_s / stride_s)) + 1)  # the detector's average: this many windows
    smooth = np.stack([scores[max(0, i - span + 1):i + 1].mean(axis=0) for i in range(len(scores))])
    rows = []
    for truth, source in zip(stream.truth, stream.sources):
        near = np.abs(centres - truth.time_s) <= tolerance_s
        at = int(round(truth.start_s * rate))
        _, aligned = pred.scan(stream.samples[at:at + rate], 1.0)
        row = {"label": truth.label, "noise": stream.noise,
               "keyword_peak": float(smooth[near][:, keywords].max()) if near.any() else 0.0}
        if truth.label in labels and not truth.label.startswith("_"):
            k = labels.index(truth.label)
            _, clean = pred.scan(load_file(Path(source), rate)[:rate], 1.0)
            row |= {"clean": labels[int(np.argmax(clean[0]))], "aligned": labels[int(np.argmax(aligned[0]))],
                    "peak": float(smooth[near, k].max()) if near.any() else 0.0}
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    kw = [r for r in rows if "clean" in r]
    other = [r for r in rows if "clean" not in r]

    def share(items, test) -> float | None:
        return round(sum(1 for r in items if test(r)) / len(items), 4) if items else None

    def group(items) -> dict:
        return {"n": len(items), "clean": share(items, lambda r: r["clean"] == r["label"]),
                "aligned_in_noise": share(items, lambda r: r["aligned"] == r["label"]),
                "stream_peak_at_0.7": share(items, lambda r: r["peak"] >= 0.7)}

    return {
        "keywords": {**group(kw), **{f"stream_peak_at_{t}": share(kw, lambda r, t=t: r["peak"] >= t) for t in THRESHOLDS}},
        "other_words": {"n": len(other),
                        **{f"keyword_at_{t}": share(other, lambda r, t=t: r["keyword_peak"] >= t) for t in THRESHOLDS}},
        "by_noise": {n: group([r for r in kw if r["noise"] == n]) for n in sorted({r["noise"] for r in kw})},
        "by_keyword": {k: group([r for r in kw if r["label"] == k])
                       | {"aligned_as": dict(Counter(r["aligned"] for r in kw if r["label"] == k and r["aligned"] != k))}
                       for k in sorted({r["label"] for r in kw})},
    }


def main(argv: list[str] | None = None) -> int:
    from kws.config import compose
    from kws.serving.predictor import Predictor
    from kws.stages.stream import split_streams

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, required=True, help="a prepared features folder (its split lists)")
    parser.add_argument("--model", type=Path, required=True, help="a model folder or bundle")
    parser.add_argument("--split", choices=("validation", "test"), default="test")
    parser.add_argument("--name", default=None, help="what the model is, for the result file (default: --model)")
    parser.add_argument("--out", default="stream_loss.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    sc = compose([], conf_dir=REPO / "conf").stream
    pred = Predictor(args.model, runtime="tflite", warmup=False)
    streams, info = split_streams(args.features, args.split, sc, pred.cfg.sample_rate)
    rows = [r for s in streams for r in word_rows(pred, s, float(sc.stride_s), float(sc.tolerance_s), AVERAGE_S)]
    summary = summarize(rows)
    k = summary["keywords"]
    print(f"{args.split} streams, {info['minutes']:g} min, {k['n']} keywords: clean {k['clean']:.1%}, "
          f"aligned in noise {k['aligned_in_noise']:.1%}, in the stream (peak >= 0.7) {k['stream_peak_at_0.7']:.1%}")
    print(table([[n, g["n"], f"{g['clean']:.1%}", f"{g['aligned_in_noise']:.1%}", f"{g['stream_peak_at_0.7']:.1%}"]
                 for n, g in {**summary["by_noise"], **summary["by_keyword"]}.items()],
                ["noise / keyword", "n", "clean", "aligned in noise", "stream peak >= 0.7"]))
    write_result(args.out, {"what": "where stream recall goes: the same keywords clean, aligned in noise, in the stream",
                            "model": args.name or str(args.model), "split": args.split, "streams": info,
                            "average_window_s": AVERAGE_S, "summary": summary, "machine": machine_info()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
