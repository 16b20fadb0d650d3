"""Process pools for CPU-bound stage work (featurization, speech synthesis).

A forked worker inherits the parent's imports and warmed-up kernels, so ``fork`` is the
cheap start method, and the stage commands (``python -m kws.stages.prepare``, the download
stage's synthesis) use it. A process that has loaded TensorFlow (it trained or scored a model
in-process: the benchmarks, the tests) is another matter: TensorFlow's thread pools may hold
locks when the process forks, and its forked workers die or hang (``BrokenProcessPool``). Such a
process gets ``forkserver`` workers instead: forked from a clean server process that
pre-imports the worker's module once. (Idle BLAS threads, which numpy starts at import, are
fork-safe and do not count.)
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


def start_method() -> str:
    """``fork``, or ``forkserver`` once TensorFlow is loaded in this process."""
    return "forkserver" if "tensorflow" in sys.modules else "fork"


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
