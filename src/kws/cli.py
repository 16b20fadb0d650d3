"""Shared behaviour of every console entry point: one logging setup, clean errors, exit codes."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from kws.errors import KWSError
from kws.logs import setup_logging


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``docker stop``, a CI timeout) delivered to a command: unwinds like Ctrl-C,
    so every ``finally``/context manager runs (temp dirs removed, worker pools shut down, the
    MLflow run ended as KILLED) instead of the process dying mid-write."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # the signals terminate_as_interrupt turned into exceptions, in order


def _exception(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _on_interrupt(signum, _frame):
    _received.append(signum)
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    raise _exception(signum)


@contextmanager
def _handling(handler) -> Iterator[dict]:
    """``handler`` for Ctrl-C and SIGTERM within the block; yields the handlers it replaced."""
    previous = {s: signal.signal(s, handler) for s in _SIGNALS}
    try:
        yield previous
    finally:
        for s, replaced in previous.items():
            signal.signal(s, replaced)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` and Ctrl-C ``KeyboardInterrupt`` in the
    main thread (the previous handlers are restored after). Each is also recorded, so a long loop
    can re-raise one that library code swallowed: see :func:`raise_if_interrupted`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    try:
        with _handling(_on_interrupt):
            yield
    finally:
        _received.clear()


def raise_if_interrupted() -> None:
    """For a safe point of a long loop (a training step): the exception a signal raises can land
    anywhere in the main thread, inside a finalizer or a library's broad ``except`` too, and be lost
    there; a signal received before this point is raised again here, so the command still stops."""
    if _received:
        raise _exception(_received[0])


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back for the block (e.g. a write to the MLflow store: interrupted
    inside its SQLite transaction, the store stays locked and the run cannot be ended); one that
    arrives meanwhile is delivered as the block ends. The handlers are swapped rather than the
    signals masked: in a process with other threads (TensorFlow's) the kernel hands a signal masked
    in the main thread to another thread, and Python still runs its handler in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    try:
        with _handling(lambda signum, _frame: held.append(signum)) as previous:
            yield
    finally:
        if held:  # only once the handlers are back: delivered as if it arrived now
            _deliver(held[0], previous[held[0]])


def _deliver(signum: int, handler) -> None:
    """What ``signum`` would have done under ``handler`` (the one a held signal was kept from)."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)


def run_cli(fn: Callable[[], object]) -> int:
    """Run ``fn``; a :class:`KWSError` becomes a one-line message and exit status 1; Ctrl-C exits
    130 and SIGTERM 143, both after the stage's own clean-up has run."""
    setup_logging()
    try:
        with terminate_as_interrupt():
            fn()
    except KWSError as err:
        logging.getLogger("kws").debug("failed: %s", err.message)  # the user sees the one line below
        print(f"error: {err.message}", file=sys.stderr)
        return 1
    except Terminated as err:
        print(f"terminated ({err}): cleaned up, outputs unchanged", file=sys.stderr)
        return 128 + int(err.signum)
    except KeyboardInterrupt:
        print("interrupted: cleaned up, outputs unchanged", file=sys.stderr)
        return 130
    return 0


def stage_cli(prog: str, description: str, stage: Callable[..., object], argv: list[str] | None = None) -> int:
    """Entry point of a pipeline stage that needs only ``--params``: ``stage(cfg)`` under :func:`run_cli`."""
    import argparse

    from kws.config import load_params

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--params", default="params.yaml", help="composed parameters (default: %(default)s)")
    args = parser.parse_args(argv)
    return run_cli(lambda: stage(load_params(args.params)))
