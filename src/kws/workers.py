"""Process pools for CPU-bound stage work (featurization, speech synthesis).

A forked worker inherits the parent's imports and warmed-up kernels, so ``fork`` is the
cheap start method, and the stage commands (``python -m kws.stages.prepare``, the download
stage's synthesis) use it. A process that has loaded TensorFlow (it trained or scored a model
in-process: the benchmarks, the tests) is another matter: TensorFlow's thread pools may hold
locks when the process forks, and its forked workers die or hang (``BrokenProcessPool``). Such a
process gets ``forkserver`` workers instead: forked from a clean server process that
pre-imports the worker's module once. (Idle BLAS threads, which numpy starts at import, are
fork-safe and do not count.)

Signals: Ctrl-C reaches the whole process group, and the parent alone decides what it means (it
cancels the queue and shuts the pool down), so a worker ignores SIGINT; SIGTERM (the pool's own
terminate) ends a worker at once. A worker forked while the parent's handlers are in place would
run them until its own are set, and a signal in that window printed a traceback from the worker:
the workers are forked with both signals held back, and each lets them through once its
handlers are set (the parent, right after the forks: a signal is delayed, never lost).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

_HELD = (signal.SIGINT, signal.SIGTERM)


def start_method() -> str:
    """``fork``, or ``forkserver`` once TensorFlow is loaded in this process."""
    return "forkserver" if "tensorflow" in sys.modules else "fork"


def _start_worker(initializer: Callable[..., Any] | None, *initargs: Any) -> None:
    """Every worker's first step: its own signal handling (module docstring), then ``initializer``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
    if initializer is not None:
        initializer(*initargs)


def _run_worker(target: Callable[..., Any], args: Sequence[Any]) -> None:
    _start_worker(None)
    target(*args)


def start_process(target: Callable[..., Any], args: Sequence[Any] = ()) -> multiprocessing.Process:
    """``target(*args)`` in a new ``spawn``-ed interpreter (nothing of this process inherited:
    TensorFlow starts afresh there), with a worker's signal handling; it is started with both
    signals held back, as the pools' workers are (module docstring)."""
    process = multiprocessing.get_context("spawn").Process(target=_run_worker, args=(target, tuple(args)))
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)  # the mask survives fork and exec
    try:
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    return process


def _nothing() -> None:
    """A first job: submitting it makes the pool start its workers (all of them, when forked)."""


def process_pool(
    max_workers: int, initializer: Callable[..., Any] | None = None, initargs: Sequence[Any] = ()
) -> ProcessPoolExecutor:
    method = start_method()
    context = multiprocessing.get_context(method)
    if method == "forkserver" and initializer is not None:
        # read only when the server starts (once per process): later pools reuse it
        context.set_forkserver_preload([__name__, initializer.__module__])
    log.debug("process pool: %d workers, started by %s", max_workers, method)
    start = functools.partial(_start_worker, initializer)
    pool = ProcessPoolExecutor(max_workers, mp_context=context, initializer=start, initargs=tuple(initargs))
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)  # the forks (and the pool's thread) inherit the mask
    try:
        pool.submit(_nothing)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    return pool
