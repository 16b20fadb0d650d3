"""Shared behaviour of every console entry point: one logging setup, clean errors, exit codes."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from kws.errors import KWSError
from kws.logs import setup_logging


def run_cli(fn: Callable[[], object]) -> int:
    """Run ``fn``; a :class:`KWSError` becomes a one-line message and exit status 1."""
    setup_logging()
    try:
        fn()
    except KWSError as err:
        logging.getLogger("kws").debug("failed: %s", err.message)  # the user sees the one line below
        print(f"error: {err.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
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
