"""Score a model bundle on any labelled folder of clips: ``kws-score BUNDLE FOLDER``.

Each clip goes through exactly what the HTTP service does with an upload
(:func:`kws.audio.decode`, :func:`kws.audio.check_not_silent`, then
:meth:`kws.serving.predictor.Predictor.predict`), so the figure is the service's own.
A clip the service would reject (corrupt, empty, silent, too long) is not a crash: it
counts as wrong and is listed under ``errors``.

Folder layouts (``--layout``):

* ``archive`` — the Speech Commands archive, ``<word>/<speaker>_nohash_<n>.wav``: a word
  that is a model label is itself, any other word is ``_unknown_`` (when the model has it);
  folders starting with ``_`` are skipped except ``_silence_``. ``--silence-dir`` adds every
  .wav of another folder as ``_silence_``.
* ``canonical`` — the official canonical test set, ``<class>/*.wav`` with ``_unknown_`` and
  ``_silence_`` among the class folders; every folder must be a model label.
* ``auto`` (default) — canonical when there is a ``_unknown_`` or ``_silence_`` folder and
  every folder is a model label, else archive.

``--list FILE`` keeps only the clips listed (``word/file.wav`` a line, as ``testing_list.txt``).
The report gives accuracy and per-class recall with 95 % Wilson intervals, the top
confusions, the errors, the per-clip latency (decode + predict) and the throughput. Invariant
of a result: ``correct + sum(confusion counts) + len(errors) == n``.

A large folder is scored by ``--workers`` processes (default: every core), each with its own
predictor, on chunks of ``--batch`` clips: a worker decodes its chunk and scores all of its
short clips in one feature pass and one runtime call (:meth:`Predictor.predict_clips`), which
gives the answers clip-by-clip scoring gives. The latency is then per clip within a chunk (the
chunk's time over its clips); ``--workers 1 --batch 1`` scores one clip at a time, as the
service does.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from kws.errors import ConfigError, DatasetError, KWSError, NotComparableError
from kws.labels import SILENCE, UNKNOWN

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "archive", "canonical")
Item = tuple[Path, str]


# --------------------------------------------------------------------------- statistics
def wilson(k: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of ``k`` successes in ``n`` trials ((0, 1) when ``n`` is 0)."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(max(0.0, ci.low)), float(min(1.0, ci.high))


# --------------------------------------------------------------------------- collecting clips
def _wavs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".wav" and p.is_file())


def _read_list(list_file: str | Path) -> set[str]:
    path = Path(list_file)
    if not path.is_file():
        raise DatasetError(f"list file {path} not found")
    lines = (line.strip().replace("\\", "/") for line in path.read_text().splitlines())
    return {line.removeprefix("./") for line in lines if line and not line.startswith("#")}


def collect(folder: str | Path, labels: Sequence[str], layout: str = "auto", silence_dir: str | Path | None = None,
            list_file: str | Path | None = None) -> tuple[list[Item], str]:
    """The clips of ``folder`` with their true labels (``labels``: the model's), and the layout used."""
    folder, labels = Path(folder), list(labels)
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if not folder.is_dir():
        raise DatasetError(f"folder {folder} not found (or not a directory)")
    dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))  # is_dir follows links
    names = {d.name for d in dirs}
    if layout == "auto":
        special = names & {SILENCE, UNKNOWN}
        layout = "canonical" if special and names <= set(labels) else "archive"
    items: list[Item] = []
    skipped: list[str] = []
    for d in dirs:
        if layout == "canonical":
            if d.name not in labels:
                raise DatasetError(f"folder {d.name!r} in {folder} is not a label of the model ({', '.join(labels)}); "
                                   "a canonical layout has one folder per model label (try --layout archive)")
            true = d.name
        elif d.name.startswith("_"):
            if d.name != SILENCE or SILENCE not in labels:
                skipped.append(d.name)
                continue
            true = SILENCE
        elif d.name in labels:
            true = d.name
        elif UNKNOWN in labels:
            true = UNKNOWN
        else:
            skipped.append(d.name)
            continue
        items += [(p, true) for p in _wavs(d)]
    if skipped:
        log.info("skipped folders (no matching model label): %s", ", ".join(skipped))
    if list_file is not None:
        wanted = _read_list(list_file)
        items = [(p, t) for p, t in items if f"{p.parent.name}/{p.name}" in wanted]
        if len(wanted) > len(items):
            log.warning("%d of the %d clips in %s are not in %s", len(wanted) - len(items), len(wanted),
                        list_file, folder)
    if silence_dir is not None:
        silence_dir = Path(silence_dir)
        if not silence_dir.is_dir():
            raise DatasetError(f"silence folder {silence_dir} not found (or not a directory)")
        if SILENCE not in labels:
            raise ConfigError(f"--silence-dir given but the model has no {SILENCE} label")
        items += [(p, SILENCE) for p in _wavs(silence_dir)]
    if not items:
        raise DatasetError(f"no .wav clips found in {folder} ({layout} layout) for labels {', '.join(labels)}")
    log.info("%d clips in %s (%s layout)", len(items), folder, layout)
    return items, layout


# --------------------------------------------------------------------------- the service's classifier
class BundleClassifier:
    """``classify(path) -> label`` through the service's decoder and predictor (loaded once)."""

    def __init__(self, bundle: str | Path, runtime: str = "tflite", threshold: float | None = None,
                 max_duration_s: float = 60.0):
        from kws.serving.predictor import Predictor

        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must be between 0 and 1, got {threshold:g}")
        self.predictor = Predictor(bundle, runtime=runtime, warmup=True)
        self.labels = list(self.predictor.labels)
        self.runtime = self.predictor.runtime.name
        self.threshold = threshold
        self.max_duration_s = max_duration_s

    def load(self, path: Path) -> np.ndarray:
        """The clip's samples as the service decodes an upload (a :class:`KWSError` where it would refuse it)."""
        from kws.audio import check_not_silent, decode

        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise DatasetError(f"cannot read {path}: {err.strerror or err}") from None
        audio = decode(data, sample_rate=self.predictor.cfg.sample_rate, max_duration_s=self.max_duration_s)
        check_not_silent(audio.samples)  # the service answers 422 to silent audio
        return audio.samples

    def __call__(self, path: Path) -> str:
        return self.predictor.predict(self.load(path), threshold=self.threshold)["keyword"]

    def classify_many(self, paths: Sequence[Path]) -> list[tuple[str | None, str | None, float]]:
        """``(predicted label or None, error message or None, seconds per clip)`` of each path; the
        clips that decode are scored together (:meth:`Predictor.predict_clips`)."""
        t0 = time.perf_counter()
        loaded, errors = {}, {}
        for i, path in enumerate(paths):
            try:
                loaded[i] = self.load(path)
            except (KWSError, OSError) as err:
                errors[i] = getattr(err, "message", None) or str(err)
        answers = dict(zip(loaded, self.predictor.predict_clips(list(loaded.values()), threshold=self.threshold)))
        seconds = (time.perf_counter() - t0) / max(1, len(paths))
        return [(answers[i]["keyword"], None, seconds) if i in answers else (None, errors[i], seconds)
                for i in range(len(paths))]


def bundle_classifier(bundle: str | Path, runtime: str = "tflite", threshold: float | None = None) -> BundleClassifier:
    """A callable ``path -> predicted label`` with ``.labels``, ``.runtime`` and ``.predictor``."""
    return BundleClassifier(bundle, runtime=runtime, threshold=threshold)


# --------------------------------------------------------------------------- scoring
def score(items: Iterable[Item], classify: Callable[[Path], str], labels: Sequence[str], progress: bool = True) -> dict:
    """Run ``classify`` on every ``(path, true label)``; accuracy, recall, confusions, errors, latency."""
    from tqdm import tqdm

    items = list(items)
    started = time.perf_counter()
    rows = []
    bar = tqdm(items, desc="scoring", unit="clip", file=sys.stderr, disable=(not progress or len(items) < 20) or None)
    for path, _ in bar:
        t0 = time.perf_counter()
        try:
            rows.append((classify(path), None, time.perf_counter() - t0))
        except (KWSError, OSError) as err:
            rows.append((None, getattr(err, "message", None) or str(err), time.perf_counter() - t0))
    return summarize(items, rows, labels, time.perf_counter() - started)


def summarize(items: Sequence[Item], rows: Sequence[tuple[str | None, str | None, float]], labels: Sequence[str],
              seconds: float) -> dict:
    """The result of scoring ``items``: ``rows`` holds ``(predicted, error message, seconds)`` of each."""
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
    order = list(labels) + sorted({p["true"] for p in predictions} - set(labels))
    per_class = {}
    for label in order:
        rows = [p for p in predictions if p["true"] == label]
        if rows:
            k = sum(p["predicted"] == label for p in rows)
            per_class[label] = {"n": len(rows), "correct": k, "recall": k / len(rows), "ci95": list(wilson(k, len(rows)))}
    pairs = Counter((p["true"], p["predicted"]) for p in predictions
                    if p["predicted"] is not None and p["predicted"] != p["true"])
    confusions = [{"true": t, "predicted": q, "count": c}
                  for (t, q), c in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))]
    lat = {"p50": float(np.percentile(latencies, 50)), "p95": float(np.percentile(latencies, 95))} if latencies \
        else {"p50": None, "p95": None}
    return {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0, "ci95": list(wilson(correct, n)),
            "per_class": per_class, "confusions": confusions, "errors": errors, "latency_ms": lat,
            "clips_per_s": round(n / seconds, 1) if seconds > 0 else None,
            "labels": list(labels), "predictions": predictions}


def bundle_accuracy(bundle_dir: Path, test_set: dict, batch: int = 128) -> float:
    """Accuracy of any serving bundle on a test split described by ``test_examples.json``
    (:data:`kws.artifacts.TEST_EXAMPLES_FILE`, written by the prepare stage): every example is
    rendered from the dataset again and scored by the service's predictor with the BUNDLE's own
    front end, so models with different features are compared on the very same clips.
    Raises :class:`NotComparableError` when the bundle predicts other labels."""
    from kws.audio import load_file
    from kws.dataset import Example, render
    from kws.serving.predictor import Predictor

    predictor = Predictor(bundle_dir, runtime="tflite", warmup=False)
    if list(predictor.labels) != list(test_set["labels"]):
        raise NotComparableError(
            f"the model in {bundle_dir} predicts {predictor.labels}, the test set has {test_set['labels']}")
    cfg = predictor.cfg
    examples = [Example(**e) for e in test_set["examples"]]
    noise = [load_file(f, cfg.sample_rate) for f in test_set["noise_files"]] if any(e.noise >= 0 for e in examples) else []
    roots = [Path(test_set["root"])]
    correct = 0
    for i in range(0, len(examples), batch):
        chunk = examples[i : i + batch]
        waves = np.stack([render(e, roots, noise, cfg.clip_samples, cfg.sample_rate) for e in chunk])
        scores = predictor.clip_scores(waves)  # as the service scores a clip (test-time shifts included)
        correct += int(np.sum(scores.argmax(axis=1) == np.asarray([e.label for e in chunk])))
    return correct / max(1, len(examples))


# --------------------------------------------------------------------------- many processes, batches
_worker: BundleClassifier | KWSError | None = None


def _init_worker(bundle: str, runtime: str, threshold: float | None) -> None:
    global _worker
    logging.getLogger("kws").setLevel(logging.WARNING)  # one "loaded" line per worker is noise
    try:
        _worker = BundleClassifier(bundle, runtime=runtime, threshold=threshold)
    except KWSError as err:  # raised from the first chunk: a failing initializer would be restarted forever
        _worker = err


def _score_chunk(paths: list[Path]) -> list[tuple[str | None, str | None, float]]:
    if isinstance(_worker, KWSError):
        raise _worker
    return _worker.classify_many(paths)


def score_bundle(items: Iterable[Item], bundle: str | Path, runtime: str = "tflite", threshold: float | None = None,
                 workers: int | None = None, batch: int = 32, progress: bool = True) -> dict:
    """:func:`score` of the bundle's service classifier, in ``workers`` processes (default: every
    core; 1: this process) on chunks of ``batch`` clips. The same predictions as :func:`score`."""
    from tqdm import tqdm

    items = list(items)
    workers = max(1, int(workers or os.cpu_count() or 1))
    batch = max(1, int(batch))
    chunks = [[p for p, _ in items[i:i + batch]] for i in range(0, len(items), batch)]
    workers = min(workers, len(chunks))
    bar = tqdm(total=len(items), desc="scoring", unit="clip", file=sys.stderr,
               disable=(not progress or len(items) < 20) or None)
    started = time.perf_counter()
    rows: list = []
    if workers == 1:
        classify = BundleClassifier(bundle, runtime=runtime, threshold=threshold)
        for chunk in chunks:
            rows += classify.classify_many(chunk)
            bar.update(len(chunk))
    else:
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        # spawn: the parent may hold TensorFlow or interpreter threads that a fork would copy mid-state;
        # an executor, not a Pool: a worker that dies is an error here, not a restart loop
        ctx = multiprocessing.get_context("spawn")
        try:
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(str(bundle), runtime, threshold)) as pool:
                for part in pool.map(_score_chunk, chunks):
                    rows += part
                    bar.update(len(part))
        except BrokenProcessPool as err:
            raise KWSError(f"a kws-score worker process died ({err}); try --workers 1") from None
    bar.close()
    from kws.bundle import read_meta

    # the throughput includes loading the predictors (and starting the workers): what a run costs
    result = summarize(items, rows, read_meta(bundle).labels, time.perf_counter() - started)
    return {**result, "workers": workers, "batch": batch}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def format_report(result: dict, title: str = "", top: int = 10) -> str:
    """Plain-text report of a :func:`score` result."""
    lo, hi = result["ci95"]
    out = [title] if title else []
    out.append(f"clips     {result['n']}")
    out.append(f"accuracy  {_pct(result['accuracy'])} %  ({result['correct']}/{result['n']}; "
               f"95 % CI {_pct(lo)}-{_pct(hi)} %, Wilson)")
    out.append("per-class recall:")
    width = max([len(k) for k in result["per_class"]] + [5])
    out.append(f"  {'class':<{width}}  {'recall':>7}  {'n':>5}  95 % CI")
    for label, c in result["per_class"].items():
        out.append(f"  {label:<{width}}  {_pct(c['recall']):>5} %  {c['n']:>5}  "
                   f"{_pct(c['ci95'][0])}-{_pct(c['ci95'][1])} %")
    if result["confusions"]:
        out.append("top confusions (true → predicted: count):")
        out += [f"  {c['true']} → {c['predicted']}: {c['count']}" for c in result["confusions"][:top]]
    out.append(f"errors    {len(result['errors'])}")
    out += [f"  {e['file']}: {e['message']}" for e in result["errors"][:top]]
    if len(result["errors"]) > top:
        out.append(f"  ... and {len(result['errors']) - top} more")
    lat = result["latency_ms"]
    if lat["p50"] is not None:
        out.append(f"latency   median {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms per clip (decode + predict)")
    if result.get("clips_per_s"):
        how = f" ({result['workers']} workers, batches of {result['batch']})" if "workers" in result else ""
        out.append(f"speed     {result['clips_per_s']:.0f} clips/s{how}")
    return "\n".join(out)


# --------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kws-score", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="serving bundle directory (model.tflite, labels.json, ...)")
    p.add_argument("folder", type=Path, help="folder of labelled clips")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="folder layout (default: %(default)s)")
    p.add_argument("--silence-dir", type=Path, help="every .wav in this folder is a _silence_ clip")
    p.add_argument("--list", dest="list_file", type=Path, help="score only the clips listed (word/file.wav a line)")
    p.add_argument("--runtime", choices=("auto", "tflite", "tflite_int8", "keras"), default="tflite",
                   help="default: %(default)s (auto: what the service picks)")
    p.add_argument("--workers", type=int, default=None, help="processes scoring in parallel (default: every core)")
    p.add_argument("--batch", type=int, default=32, help="clips a worker scores together (default: %(default)s)")
    p.add_argument("--threshold", type=float, help="below this confidence the keyword is _unknown_ (as the service)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--output", type=Path, help="also write the JSON result to this file")
    p.add_argument("--limit", type=int, help="score a fixed-seed random sample of at most N clips")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    from kws.atomic import write_text
    from kws.bundle import read_meta

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1, got {args.threshold:g}")
    labels = read_meta(args.bundle).labels  # fails fast (ModelNotFoundError) before the folder is walked
    items, layout = collect(args.folder, labels, args.layout, args.silence_dir, args.list_file)
    if args.limit is not None:
        if args.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {args.limit}")
        if args.limit < len(items):
            items = sorted(random.Random(0).sample(items, args.limit))
    for name in ("workers", "batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(args, name)}")
    from kws.serving.runtimes import int8_preferred

    runtime = args.runtime
    if runtime == "auto":  # what the service would load
        runtime = "tflite_int8" if int8_preferred(read_meta(args.bundle)) else "tflite"
    result = score_bundle(items, args.bundle, runtime=runtime, threshold=args.threshold, workers=args.workers,
                          batch=args.batch)
    result.update({"bundle": str(args.bundle), "folder": str(args.folder), "layout": layout,
                   "runtime": runtime, "threshold": args.threshold})
    text = json.dumps(result, indent=2)
    if args.output is not None:
        try:
            write_text(args.output, text + "\n")
        except OSError as err:
            raise ConfigError(f"cannot write {args.output}: {err.strerror or err}") from None
        log.info("result written to %s", args.output)
    if args.json:
        print(text)
    else:
        title = f"kws-score: {args.bundle} ({runtime}) on {args.folder} [{layout} layout]"
        print(format_report(result, title))
    return result


def main(argv: list[str] | None = None) -> int:
    from kws.cli import run_cli

    args = parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
