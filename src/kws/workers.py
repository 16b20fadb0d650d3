"""Process pools for CPU-bound stage work (featurization, speech synthesis).

A forked worker inherits the parent's imports and warmed-up kernels, so ``fork`` is the
cheap start method — but POSIX only promises a usable child when the parent has a single
thread. A process that already trained a model (TensorFlow's thread pools), runs a web
server or a progress-bar monitor may hold locks in other threads; its forked workers then
die or hang (``BrokenProcessPool``). Such a process gets ``forkserver`` workers instead:
forked from a clean single-threaded server that pre-imports the worker's module once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


def thread_count() -> int:
    """OS threads of this process (Python's and native ones, e.g. TensorFlow's)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # no procfs: count what Python knows of
        import threading

        return threading.active_count()


def start_method() -> str:
    """``fork`` for a single-threaded process, else ``forkserver``."""
    return "fork" if thread_count() == 1 else "forkserver"


def process_pool(
    max_workers: int, initializer: Callable[..., Any] | None = None, initargs: Sequence[Any] = ()
) -> ProcessPoolExecutor:
    method = start_method()
    context = multiprocessing.get_context(method)
    if method == "forkserver" and initializer is not None:
        # read only when the server starts (once per process): later pools reuse it
        context.set_forkserver_preload([initializer.__module__])
    log.debug("process pool: %d workers, started by %s", max_workers, method)
    return ProcessPoolExecutor(max_workers, mp_context=context, initializer=initializer, initargs=tuple(initargs))
