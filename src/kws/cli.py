"""Shared behaviour of every console entry point: one logging setup, clean errors, exit codes."""

from __future__ import annotations

import logging
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


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block (e.g. a write to the MLflow store: interrupted
    inside its SQLite transaction, the run could not be ended afterwards); one that arrives
    meanwhile is delivered as the block ends."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
