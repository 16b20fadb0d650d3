"""kws.cli's signal handling, in this (multi-threaded) process: a signal held back by
``uninterrupted`` waits for the block's end even while other threads run, and a signal whose
exception library code swallowed is raised again at the next ``raise_if_interrupted``."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from kws.cli import Terminated, raise_if_interrupted, terminate_as_interrupt, uninterrupted


@pytest.fixture
def other_thread():
    """A second thread that does not block any signal (as TensorFlow's threads do not)."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    yield thread
    stop.set()
    thread.join()


def _busy(seconds: float) -> None:
    """Python bytecode for a while: where a pending signal handler gets to run."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(100))


@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_a_signal_inside_uninterrupted_is_delivered_when_the_block_ends(other_thread, signum, raised):
    steps = []
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with terminate_as_interrupt():
        with pytest.raises(raised) as err:
            with uninterrupted():
                os.kill(os.getpid(), signum)
                _busy(0.3)
                steps.append("block finished")
            steps.append("after the block")  # never: the held signal is raised as the block ends
    assert steps == ["block finished"]
    assert err.type is raised
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers restored


def test_nested_blocks_hold_a_signal_until_the_outermost_ends(other_thread):
    steps = []
    with terminate_as_interrupt(), pytest.raises(Terminated):
        with uninterrupted():
            with uninterrupted():
                os.kill(os.getpid(), signal.SIGTERM)
                _busy(0.2)
            steps.append("inner ended")
            _busy(0.2)
            steps.append("outer finished")
    assert steps == ["inner ended", "outer finished"]


def test_a_swallowed_terminate_is_raised_again_by_raise_if_interrupted(other_thread):
    with terminate_as_interrupt():
        raise_if_interrupted()  # nothing received yet: nothing raised
        try:  # a library's broad except (or a finalizer) eats the exception
            os.kill(os.getpid(), signal.SIGTERM)
            _busy(2.0)
        except Terminated:
            pass
        with pytest.raises(Terminated, match="SIGTERM"):
            raise_if_interrupted()
    raise_if_interrupted()  # outside the block the record is gone
