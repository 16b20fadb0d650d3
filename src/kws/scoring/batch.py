"""Scoring many clips fast: worker processes, each with the service's predictor, on batches of clips.

The parent hands each worker a batch of paths and gets labels back (no audio crosses a process
boundary). A worker reads and decodes its clips as the service decodes uploads and scores the
short ones together (:meth:`~kws.scoring.classifier.BundleClassifier.classify_many`: one feature
pass and one runtime call for the batch), which gives the answers clip-by-clip scoring gives.

The parent loads the bundle's predictor first, so a bundle that does not load fails here with its
own message, and then forks the workers (:func:`kws.workers.process_pool`): they inherit its
imports, which are most of a worker's start-up (librosa's), instead of each paying for them. Batches
are cut small enough that every worker gets several, so the last one leaves no core idle for long.

The result's ``clips_per_s`` is what the run costs, start-up included; ``startup_s`` is the time
until the last worker was ready and ``clips_per_s_scoring`` the rate after it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

from kws.errors import ConfigError, KWSError
from kws.scoring.classifier import BundleClassifier
from kws.scoring.folders import Item
from kws.scoring.summary import Row, summarize

log = logging.getLogger(__name__)

#: Clips a worker scores together at most: enough that the per-call costs (a runtime call, the
#: feature pass's set-up, a round trip to the worker) vanish per clip, few enough that a batch's
#: audio and features stay small.
DEFAULT_BATCH = 256
#: Batches per worker at least (when there are clips enough), so that the workers end together.
CHUNKS_PER_WORKER = 8


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def chunks(paths: Sequence[str], batch: int, workers: int) -> list[list[str]]:
    """``paths`` cut in batches of at most ``batch``, at least :data:`CHUNKS_PER_WORKER` per worker."""
    size = max(1, min(batch, math.ceil(len(paths) / (workers * CHUNKS_PER_WORKER))))
    return [list(paths[i:i + size]) for i in range(0, len(paths), size)]


# --------------------------------------------------------------------------- in a worker process
_worker: BundleClassifier | KWSError | None = None
_ready_at: float = 0.0


def _init_worker(bundle: str, runtime: str, threshold: float | None) -> None:
    global _worker, _ready_at
    logging.getLogger("kws").setLevel(logging.WARNING)  # one "loaded" line per worker is noise
    try:
        _worker = BundleClassifier(bundle, runtime=runtime, threshold=threshold)
    except KWSError as err:  # raised from the first batch: a failing initializer would break the pool
        _worker = err
    _ready_at = time.time()  # the wall clock: the parent compares it with its own


def _score_chunk(paths: list[str]) -> tuple[float, list[Row]]:
    if isinstance(_worker, KWSError):
        raise _worker
    return _ready_at, _worker.classify_many([Path(p) for p in paths])


# --------------------------------------------------------------------------- in the parent
def _in_workers(parts: list[list[str]], workers: int, args: tuple, bar) -> tuple[list[Row], float]:
    """Every batch scored in ``workers`` forked processes; the rows in order and when the last worker was ready."""
    from concurrent.futures.process import BrokenProcessPool

    from kws.workers import process_pool

    rows: list[Row] = []
    ready: set[float] = set()
    try:
        with process_pool(workers, _init_worker, args) as pool:
            for ready_at, part in pool.map(_score_chunk, parts):
                ready.add(ready_at)
                rows += part
                bar.update(len(part))
    except BrokenProcessPool as err:
        raise KWSError(f"a kws-score worker process died ({err}); try --workers 1") from None
    return rows, max(ready)


def _validated(workers: int | None, batch: int) -> tuple[int, int]:
    cores = available_cores()
    workers = cores if workers is None else int(workers)
    if workers < 1 or int(batch) < 1:
        raise ConfigError(f"workers and batch must be at least 1, got workers={workers}, batch={batch}")
    if workers > cores:
        log.warning("%d workers on %d cores: they take turns, which is slower than --workers %d",
                    workers, cores, cores)
    return workers, int(batch)


def score_bundle(items: Iterable[Item], bundle: str | Path, runtime: str = "tflite", threshold: float | None = None,
                 workers: int | None = None, batch: int = DEFAULT_BATCH, progress: bool = True) -> dict:
    """The :func:`~kws.scoring.summary.summarize` of the bundle's service classifier on ``items``,
    in ``workers`` processes (default: every core; 1: this process) on batches of at most
    ``batch`` clips: the predictions :func:`kws.scoring.classifier.score` gives clip by clip."""
    from tqdm import tqdm

    items = list(items)
    workers, batch = _validated(workers, batch)
    started, wall = time.perf_counter(), time.time()
    classify = BundleClassifier(bundle, runtime=runtime, threshold=threshold)  # fails here, before any fork
    parts = chunks([str(p) for p, _ in items], batch, workers)
    workers = min(workers, len(parts))
    bar = tqdm(total=len(items), desc="scoring", unit="clip", file=sys.stderr,
               disable=(not progress or len(items) < 20) or None)
    with bar:
        if workers == 1:
            startup = time.perf_counter() - started
            rows = []
            for part in parts:
                rows += classify.classify_many([Path(p) for p in part])
                bar.update(len(part))
        else:
            rows, ready_at = _in_workers(parts, workers, (str(bundle), runtime, threshold), bar)
            startup = max(0.0, ready_at - wall)
    seconds = time.perf_counter() - started
    result = summarize(items, rows, classify.labels, seconds)
    scoring = seconds - startup
    return {**result, "runtime": classify.runtime, "workers": workers, "batch": batch, "startup_s": round(startup, 3),
            "clips_per_s_scoring": round(len(items) / scoring, 1) if scoring > 0 else None}
