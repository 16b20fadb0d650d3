"""Running a generated source's jobs (one per speaker or word) in worker processes, with a
progress bar counted in clips; shared by :mod:`kws.synthetic` and :mod:`kws.negatives`."""

from __future__ import annotations

from concurrent.futures import FIRST_EXCEPTION, wait
from typing import Any, Callable, Sequence

from kws.cli import uninterrupted
from kws.takes import warm_up
from kws.workers import process_pool


def run_parallel(
    func: Callable[..., int], jobs: Sequence[tuple], *, total: int, n_workers: int,
    initializer: Callable[..., None], initargs: tuple, progress: bool, desc: str = "synthesising",
) -> list[Any]:
    """``func(*job)`` for every job, in ``n_workers`` processes (1: this one), with a progress bar
    of ``total`` clips. ``func`` returns the clips it made (an int) or ``(clips, result)``; the
    results come back in job order. A worker's error is re-raised here, the queue cancelled."""
    from tqdm import tqdm

    def count(out: Any) -> int:
        return out[0] if isinstance(out, tuple) else out

    results: list[Any] = [None] * len(jobs)
    if n_workers == 1:
        initializer(*initargs)
        with tqdm(total=total, unit="clip", desc=desc, disable=not progress) as bar:
            for i, job in enumerate(jobs):
                results[i] = func(*job)
                bar.update(count(results[i]))
        return results

    warm_up()  # every source cleans its takes with librosa: compiled once, inherited by the workers
    pool = process_pool(n_workers, initializer, initargs)
    try:
        with uninterrupted():  # a signal inside a submit can leave the pool's shutdown waiting forever
            futures = {pool.submit(func, *job): i for i, job in enumerate(jobs)}  # before tqdm starts a thread
        with tqdm(total=total, unit="clip", desc=desc, disable=not progress) as bar:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    results[futures[future]] = future.result()  # re-raises a worker's DatasetError
                    bar.update(count(results[futures[future]]))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results
