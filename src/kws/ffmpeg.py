"""ffmpeg and ffprobe under budgets, so that no upload can cost the service more than a bounded
amount of CPU, wall time and concurrency.

* Input: the upload is written to an anonymous in-memory file (``memfd_create``) that the child
  reads as ``/dev/fd/N``: seekable (MP4/M4A keep their index at the end), never on a disk, so a
  full ``TMPDIR`` cannot break decoding. Where memfd is missing (not Linux), stdin is a pipe.
* CPU: each child's user+system time is read from ``/proc`` while it runs and the child is killed
  past ``cpu_s``; ``RLIMIT_CPU`` (whole seconds, set with ``prlimit`` right after the start) is the
  backstop should the poll miss it. The child also runs at a lower scheduling priority (``nice``)
  so that requests that need no ffmpeg (WAV, FLAC, ...) keep the CPU when both compete.
* Wall time: ``wall_s`` per child.
* Concurrency: :class:`Gate` holds at most ``concurrency`` decodes at once; a decode that gets no
  slot within ``wait_s`` raises :class:`~kws.errors.DecoderBusyError` (503 + ``Retry-After``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from kws.errors import DecoderBusyError, StorageUnavailableError, UnsupportedAudioError

log = logging.getLogger(__name__)

_POLL_S = 0.02  # how often a running child's CPU time is checked
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Limits:
    cpu_s: float = 0.5  # CPU seconds (all threads) one ffmpeg or ffprobe run may use
    wall_s: float = 10.0  # wall seconds one run may take
    concurrency: int = 2  # ffmpeg decodes at once
    wait_s: float = 0.0  # how long a decode waits for a free slot before the request is answered "busy"
    nice: int = 10  # added to the children's scheduling niceness


class BudgetExceeded(Exception):
    """A child was killed for using more than its CPU (``cpu=True``) or wall-time budget."""

    def __init__(self, cpu: bool, seconds: float):
        super().__init__(f"{'CPU' if cpu else 'wall'} budget exceeded after {seconds:.2f} s")
        self.cpu = cpu
        self.seconds = seconds


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes


class Gate:
    """At most ``limits.concurrency`` decodes at once; the rest wait up to ``limits.wait_s``."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._slots = threading.BoundedSemaphore(max(1, int(limits.concurrency)))

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if not self._slots.acquire(timeout=self.limits.wait_s):
            raise DecoderBusyError(
                f"all {self.limits.concurrency} decoders for compressed formats are busy; retry in a second "
                "(WAV and FLAC are never queued)", retry_after_s=max(1, math.ceil(self.limits.wait_s)))
        try:
            yield
        finally:
            self._slots.release()


def _os_error(what: str, err: OSError) -> StorageUnavailableError:
    log.warning("%s failed: %s", what, err)
    return StorageUnavailableError(
        f"the server could not {what} ({err.strerror or err}); the upload may be fine: retry later")


@contextlib.contextmanager
def staged(data: bytes) -> Iterator[int | None]:
    """The upload in an anonymous in-memory file: its descriptor (None: no memfd here, use stdin)."""
    if not hasattr(os, "memfd_create"):  # pragma: no cover - Linux has it
        yield None
        return
    try:
        fd = os.memfd_create("kws-upload", os.MFD_CLOEXEC)
    except OSError as err:
        raise _os_error("stage the upload for decoding", err) from None
    try:
        try:
            with open(fd, "wb", closefd=False) as f:
                f.write(data)
        except OSError as err:
            raise _os_error("stage the upload for decoding", err) from None
        yield fd
    finally:
        os.close(fd)


def source(fd: int | None) -> str:
    """The ``-i`` argument that reads what :func:`staged` gave."""
    return "pipe:0" if fd is None else f"file:/dev/fd/{fd}"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a running (or not yet reaped) process, from ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15)


def _restrict(pid: int, limits: Limits) -> None:
    """CPU backstop and lower priority for a child that has just started (it may already be gone)."""
    soft = max(1, math.ceil(limits.cpu_s))
    with contextlib.suppress(OSError, AttributeError, ValueError):
        resource.prlimit(pid, resource.RLIMIT_CPU, (soft, soft + 1))
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + limits.nice))


def run(cmd: Sequence[str], fd: int | None, data: bytes, limits: Limits) -> Result:
    """Run ``cmd`` reading the staged upload; raises :class:`BudgetExceeded` past either budget."""
    try:
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL if fd is not None else subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=() if fd is None else (fd,))
    except OSError as err:
        raise _os_error(f"start {os.path.basename(cmd[0])}", err) from None
    _restrict(proc.pid, limits)
    started = time.monotonic()
    feed = data if fd is None else None
    used = 0.0
    try:
        while True:
            try:
                out, err = proc.communicate(feed, timeout=_POLL_S)
                return Result(proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                feed = None  # communicate() keeps feeding what it started with
            used = cpu_seconds(proc.pid) or used
            if used > limits.cpu_s:
                raise BudgetExceeded(True, used)
            if time.monotonic() - started > limits.wall_s:
                raise BudgetExceeded(False, time.monotonic() - started)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _probe(fd: int | None, data: bytes, fmt: str, limits: Limits) -> tuple[int | None, int | None]:
    """Sample rate and channel count of the first audio stream, as ffprobe reports them (None if unknown)."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None, None
    cmd = [ffprobe, "-v", "error", "-protocol_whitelist", "file,pipe", "-f", fmt, "-select_streams", "a:0",
           "-show_entries", "stream=sample_rate,channels", "-of", "json", source(fd)]
    try:
        stream = json.loads(run(cmd, fd, data, limits).stdout or b"{}").get("streams", [{}])[0]
        return int(stream["sample_rate"]), int(stream["channels"])
    except (BudgetExceeded, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, None


def decode(data: bytes, fmt: str, sample_rate: int, max_duration_s: float,
           limits: Limits) -> tuple[np.ndarray, int | None, int | None]:
    """Decode ``data`` with ffmpeg's ``fmt`` demuxer (never a guessed one) to mono float32 at
    ``sample_rate``; also the source's own rate and channels. Call it holding a :class:`Gate` slot."""
    ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
    with staged(data) as fd:
        cmd = [
            ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-filter_threads", "1",
            "-protocol_whitelist", "file,pipe", "-f", fmt, "-threads", "1", "-i", source(fd),
            "-map", "0:a:0", "-vn", "-sn", "-dn", "-ac", "1", "-ar", str(sample_rate),
            # Decode a little more than the limit so "too long" is detectable without decoding hours.
            "-t", f"{max_duration_s + 0.5:.3f}", "-f", "f32le", "pipe:1",
        ]
        try:
            proc = run(cmd, fd, data, limits)
        except BudgetExceeded as over:
            log.info("ffmpeg stopped on a %s upload: %s", fmt, over)
            if over.cpu:
                raise UnsupportedAudioError(
                    f"decoding this {fmt} upload needed more than its {limits.cpu_s:g} s CPU budget; "
                    "send WAV, FLAC or a common compressed format") from None
            raise DecoderBusyError("the server is too busy to decode this upload now; retry in a few seconds",
                                   retry_after_s=5) from None
        if proc.returncode != 0 or not proc.stdout:
            detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            log.info("ffmpeg could not decode a %s upload: %s", fmt, detail[-1] if detail else proc.returncode)
            raise UnsupportedAudioError(f"the upload starts like {fmt} audio but could not be decoded")
        src_sr, channels = _probe(fd, data, fmt, limits)
    return np.frombuffer(proc.stdout, dtype="<f4"), src_sr, channels
