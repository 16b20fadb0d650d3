"""How soon after a word's speech ends the bundle's detector knows it: the model's part of live latency.

Offline and deterministic, no server: every one of ``--per-word`` REAL clips of each keyword (the
clips ``bench_listen.py`` streams, from ``../shared/data``) is placed alone in a quiet 5 s
recording at several offsets against the 0.125 s window grid, scanned like a live session
(``Predictor.scan`` + ``Predictor.detect``: the service's runtime and detector at the bundle's operating point) and, where its keyword is
detected, timed from the end of its speech (``kws.audio.speech_end_s``) to the end of the window
that decided it. Live, with the session's whole-stride chunks, only the reply is added
(``bench_listen.py``: a few ms), so a word whose detector latency stays under 0.5 s shows within 0.5 s.

For the latest clips the keyword's score is also printed against the window's position (window
start minus clip start, ms): it shows where in the window the model is sure of the word.

    .venv/bin/python benchmarks/bench_latency.py --model-dir serving/model [--per-word 20] [--runtime auto]

``--runtime`` defaults to the service's (``KWS_RUNTIME=auto``: int8 where the bundle's export check
chose it): the int8 model's scores cross the threshold at other windows than float32's.

Writes ``benchmarks/results/latency.json`` (``--out``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import REPO, SAMPLE_DIR, machine_info, write_result

REAL_DIR = SAMPLE_DIR.parent / "speech_commands_real"
SR = 16000
OFFSETS_S = (0.0, 0.03, 0.06, 0.09)  # the clip's start against the 0.125 s grid
POSITIONS_MS = range(-600, 401, 100)  # window start - clip start, for the score-by-position rows


def clip_latencies(pred, path: Path, word: str) -> list[float | None]:
    """Detector latency (s) of one clip at each offset; None where its keyword is not detected."""
    from tests.support.bundles import long_recording
    from tests.support.listen import word_end_s

    out = []
    for off in OFFSETS_S:
        start = 2.0 + off
        audio = long_recording([(start, path)], duration_s=5.0, sample_dir=SAMPLE_DIR, seed=1)
        starts, scores = pred.scan(audio, 0.125)
        keep = starts * SR + pred.cfg.clip_samples <= len(audio) + 1e-6  # a live stream has no end-aligned extra window
        found = pred.detect(starts[keep], scores[keep], duration_s=5.0)  # the bundle's operating point
        hit = [d for d in found if d.keyword == word and start - 0.5 <= d.start_s + pred.window_s / 2 <= start + 1.5]
        out.append(round(hit[0].fired_s - word_end_s(path, start), 3) if hit else None)
    return out


def score_by_position(pred, path: Path, word: str) -> dict[str, float]:
    from kws.audio import fix_length, load_file, time_shift

    clip = fix_length(load_file(path, SR), SR)
    k = pred.labels.index(word)
    # a window starting ms after the clip holds the clip moved that much earlier
    return {f"{ms:+d}": round(float(pred.clip_scores(time_shift(clip, -int(ms * SR / 1000))[None])[0][k]), 3)
            for ms in POSITIONS_MS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, default=REPO / "serving" / "model")
    ap.add_argument("--per-word", type=int, default=20)
    ap.add_argument("--worst", type=int, default=5, help="clips whose score by position is reported")
    ap.add_argument("--runtime", default="auto", help="as KWS_RUNTIME (default: the service's)")
    ap.add_argument("--out", default="latency.json")
    args = ap.parse_args()

    from kws.serving.predictor import Predictor

    pred = Predictor(args.model_dir, runtime=args.runtime)
    rows = []
    for word in [w for w in pred.labels if not w.startswith("_")]:
        for path in sorted((REAL_DIR / word).glob("*.wav"))[:args.per_word]:
            rows.append({"word": word, "clip": path.name, "latency_s": clip_latencies(pred, path, word)})
    lats = np.array([x for r in rows for x in r["latency_s"] if x is not None])
    tries = len(rows) * len(OFFSETS_S)
    worst = sorted(rows, key=lambda r: -max([x for x in r["latency_s"] if x is not None], default=-9))[:args.worst]
    for r in worst:
        r["score_by_window_start_ms"] = score_by_position(pred, REAL_DIR / r["word"] / r["clip"], r["word"])
    result = {
        "what": "detector latency: end of a real keyword's speech -> end of the window that decided it (offline)",
        "machine": machine_info(),
        "config": {"model": str(args.model_dir), "runtime": pred.runtime.name, "detector": pred.detector.to_dict(),
                   "per_word": args.per_word,
                   "offsets_s": list(OFFSETS_S), "stride_s": 0.125, "clips": "first per_word of each keyword, speech_commands_real"},
        "detected": {"of": tries, "hits": int(len(lats))},
        "latency_ms": {**{f"p{q}": round(float(np.percentile(lats, q)) * 1000, 1) for q in (50, 90, 99)},
                       "max": round(float(lats.max()) * 1000, 1)} if len(lats) else {},
        "over_ms": {str(ms): int(np.sum(lats * 1000 > ms)) for ms in (350, 400, 500)},
        "worst_clips": worst,
    }
    print(f"detected {len(lats)} of {tries}; latency ms {result['latency_ms']}; over {result['over_ms']}")
    for r in worst:
        print(r["word"], r["clip"], r["latency_s"], r["score_by_window_start_ms"])
    print("wrote", write_result(args.out, result))


if __name__ == "__main__":
    main()
