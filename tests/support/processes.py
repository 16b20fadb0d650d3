"""Real server processes on free loopback ports, and the one polling helper everything waits with."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-3000:] if log is not None and log.is_file() else ""


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
             log: Path | None = None, interval: float = 0.05, last: Callable[[], object] | None = None) -> None:
    """Poll ``predicate`` every ``interval`` s until it holds.

    Fails with ``RuntimeError`` when ``proc`` ends first, with ``TimeoutError`` after ``timeout`` s;
    either message names ``what`` was awaited, what ``last()`` says was seen last, and the tail
    of ``log`` (the process's output: why it never got there)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        seen = f" (last: {last()})" if last is not None else ""
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process ended (rc {proc.returncode}) before {what}{seen}\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{seen}\n{_tail(log)}")
        time.sleep(interval)


def wait_http(url: str, timeout: float = 60.0, ok=(200,), proc: subprocess.Popen | None = None,
              log: Path | None = None) -> None:
    """:func:`wait_for` ``GET url`` to answer one of the statuses ``ok``."""
    import requests

    seen: list[str] = ["no answer yet"]

    def answers() -> bool:
        try:
            r = requests.get(url, timeout=2)
        except requests.RequestException as err:
            seen[0] = str(err)
            return False
        seen[0] = f"HTTP {r.status_code}: {r.text[:200]}"
        return r.status_code in ok

    wait_for(answers, timeout, f"{url} to answer {'/'.join(map(str, ok))}", proc, log, interval=0.1,
             last=lambda: seen[0])


class ManagedProcess:
    """A server subprocess that stops with ``stop_signal`` (then SIGKILL) and closes its log file;
    as a context manager it is stopped also when ``start()`` fails half-way."""

    proc: subprocess.Popen | None = None
    stop_signal = signal.SIGTERM
    _logf = None  # the log file the process writes to, closed on stop

    def start(self) -> "ManagedProcess":
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._logf is not None:
            self._logf.close()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()  # a server that started but never became ready must not outlive the failure
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


class ApiProcess(ManagedProcess):
    """``python -m kws.serving.server`` (real Waitress) on a free 127.0.0.1 port, with a private
    TMPDIR and working directory under ``workdir`` (its log beside it)."""

    def __init__(self, model_dir: Path, workdir: Path, env: Mapping[str, str] | None = None,
                 port: int | None = None, module: str = "kws.serving.server", args: Sequence[str] = ()):
        self.model_dir = Path(model_dir)
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.extra_env = dict(env or {})
        self.module = module
        self.args = list(args)
        self.log = self.workdir.parent / f"{self.workdir.name}.log"
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> "ApiProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tmpdir.mkdir(exist_ok=True)
        env = dict(os.environ)
        env.update({
            "KWS_MODEL_DIR": str(self.model_dir), "KWS_HOST": "127.0.0.1", "KWS_PORT": str(self.port),
            "TMPDIR": str(self.tmpdir), "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
        })
        env.update(self.extra_env)
        self.cwd.mkdir(exist_ok=True)
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args], cwd=self.cwd, env=env,
                                     stdout=self._logf, stderr=subprocess.STDOUT)
        wait_http(f"{self.url}/ready", timeout, proc=self.proc, log=self.log)
        return self

    @property
    def tmpdir(self) -> Path:
        return self.workdir / "tmp"

    @property
    def cwd(self) -> Path:
        return self.workdir / "cwd"
