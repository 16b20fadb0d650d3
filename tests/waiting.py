"""Polling for the tests that drive a real subprocess (interrupt tests)."""

from __future__ import annotations

import subprocess
import time
from typing import Callable


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             proc: subprocess.Popen | None = None) -> None:
    """Poll ``predicate`` every 50 ms; fail when ``proc`` ends first or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
