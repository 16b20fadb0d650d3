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
        logging.getLogger("kws").error("%s", err.message)
        print(f"error: {err.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
