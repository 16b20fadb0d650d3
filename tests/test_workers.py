"""The stage commands' worker pools and signals: Ctrl-C reaches the whole process group and
``kill`` the stage process, and neither may make a worker print a traceback, even while the
workers are still starting (a prepare interrupted at its first chunk did, on a loaded machine)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from kws.cli import terminate_as_interrupt
from kws.workers import process_pool
from tests.support.paths import REPO


def _signal_state() -> tuple:
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM),
            signal.SIGINT in blocked, signal.SIGTERM in blocked)


def test_workers_ignore_ctrl_c_die_on_sigterm_and_the_parent_keeps_its_handlers():
    with terminate_as_interrupt():
        handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        pool = process_pool(2)
        try:
            states = {pool.submit(_signal_state).result(timeout=60) for _ in range(4)}
        finally:
            pool.shutdown(wait=True)
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask
    assert states == {(signal.SIG_IGN, signal.SIG_DFL, False, False)}


# A stage's way: the parent raises on Ctrl-C; the workers get SIGINT the instant they exist.
STARTING = textwrap.dedent("""
    import os, signal, sys, time
    import psutil
    from kws.cli import terminate_as_interrupt
    from kws.workers import process_pool

    def square(x):
        return x * x

    with terminate_as_interrupt():
        for _ in range(5):
            pool = process_pool(2)
            job = pool.submit(square, 7)  # the workers exist once a job is in
            workers = [p for p in psutil.Process().children() if p.pid in pool._processes]
            assert len(workers) == 2, workers
            for worker in workers:
                os.kill(worker.pid, signal.SIGINT)  # most likely still in multiprocessing's bootstrap
            assert job.result(timeout=60) == 49
            pool.shutdown(wait=True)
    print("done")
""")


def test_ctrl_c_while_the_workers_start_is_no_traceback():
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", STARTING], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
