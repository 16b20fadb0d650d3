"""A pipeline stage as ``bench_scale.py`` runs it: its own subprocess under a pseudo-terminal (so
progress bars draw as they would for a user), its output timed as it arrives, the peak memory of
its process tree, and what it leaves behind (files, temp folders, processes)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

MB = 1e6
ETA = re.compile(r"\d+:\d\d<\d+:\d\d")  # tqdm's "[elapsed<remaining, rate]"


def _tree(proc) -> list:
    import psutil

    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _sum(procs, what: str) -> int:
    import psutil

    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss if what == "rss" else p.memory_full_info().pss
        except (psutil.Error, AttributeError):
            pass
    return total


class Run:
    """One stage subprocess under a pty: its log (with arrival times), peak memory, exit."""

    def __init__(self, name: str, cmd: list[str], cwd: Path, env: dict, log_path: Path):
        self.name, self.log_path = name, log_path
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.master = master
        self.text: list[str] = []
        self.arrivals: list[float] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.peak_rss = self.peak_pss = self.peak_main_rss = 0
        self.signal_sent_at: float | None = None

    def _read(self) -> None:
        with open(self.log_path, "w", errors="replace") as log:
            while True:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: the child side closed
                    break
                if not data:
                    break
                chunk = data.decode("utf-8", "replace")
                self.text.append(chunk)
                self.arrivals.append(time.perf_counter() - self.t0)
                log.write(chunk)
                log.flush()
        os.close(self.master)

    def output(self) -> str:
        return "".join(self.text)

    def monitor(self, interrupt=None, kill_after: float = 180.0) -> dict:
        """Poll memory every 0.2 s (PSS every second) until the process exits; ``interrupt`` is
        ``(pattern, delay_s, signal, to_group)``: send the signal ``delay_s`` after ``pattern``
        first shows in the output."""
        import psutil

        root = psutil.Process(self.proc.pid)
        seen_at, last_pss = None, 0.0
        while self.proc.poll() is None:
            procs = _tree(root)
            rss = _sum(procs, "rss")
            self.peak_rss = max(self.peak_rss, rss)
            try:
                self.peak_main_rss = max(self.peak_main_rss, root.memory_info().rss)
            except psutil.Error:
                pass
            now = time.perf_counter() - self.t0
            if now - last_pss >= 1.0:
                self.peak_pss = max(self.peak_pss, _sum(procs, "pss"))
                last_pss = now
            if interrupt and self.signal_sent_at is None:
                pattern, delay, sig, group = interrupt
                if seen_at is None and re.search(pattern, self.output()[-20000:]):
                    seen_at = now
                if seen_at is not None and now - seen_at >= delay:
                    (os.killpg if group else os.kill)(self.proc.pid, sig)
                    self.signal_sent_at = now
            if self.signal_sent_at is not None and now - self.signal_sent_at > kill_after:
                os.killpg(self.proc.pid, signal.SIGKILL)
            time.sleep(0.2)
        wall = time.perf_counter() - self.t0
        self.reader.join(timeout=10)
        gaps = [b - a for a, b in zip([0.0, *self.arrivals], [*self.arrivals, wall])]
        out = self.output()
        return {
            "rc": self.proc.returncode, "wall_s": round(wall, 1),
            "peak_rss_mb": round(self.peak_rss / MB, 1), "peak_pss_mb": round(self.peak_pss / MB, 1),
            "peak_main_rss_mb": round(self.peak_main_rss / MB, 1),
            "eta_in_log": bool(ETA.search(out)), "longest_silence_s": round(max(gaps), 1),
            "log": str(self.log_path),
            **({"signal_after_s": round(self.signal_sent_at, 1),
                "exit_after_signal_s": round(wall - self.signal_sent_at, 1)} if self.signal_sent_at else {}),
        }


def plain(text: str) -> str:
    """Terminal output as lines: carriage-return updates kept as separate lines, colours removed."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r\n", "\n").replace("\r", "\n")


def disk(*paths: Path) -> dict:
    """Bytes (apparent and allocated) and file count under ``paths``."""
    apparent = allocated = files = 0
    for root in paths:
        if root.is_file():
            st = root.stat()
            apparent, allocated, files = apparent + st.st_size, allocated + st.st_blocks * 512, files + 1
            continue
        for dirpath, _dirs, names in os.walk(root):
            for n in names:
                try:
                    st = os.lstat(os.path.join(dirpath, n))
                except OSError:
                    continue
                apparent += st.st_size
                allocated += st.st_blocks * 512
                files += 1
    return {"bytes": apparent, "allocated_bytes": allocated, "files": files,
            "mb": round(allocated / MB, 1)}


def snapshot(folder: Path) -> dict | None:
    """``{relative path: (size, mtime_ns)}`` of a folder, or None when it is absent."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path, name: str) -> list[dict]:
    """Hidden temp siblings a stage left next to its output ``parent/name``."""
    return [{"path": str(p), **disk(p)} for p in sorted(parent.glob(f".{name}.*"))]


def stage_processes(project: Path, name: str) -> list:
    """Processes of ``python -m kws.stages.<name>`` still running in ``project`` (orphaned workers)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if f"kws.stages.{name}" in " ".join(p.info["cmdline"] or []) and p.cwd() == str(project):
                found.append(p)
        except psutil.Error:
            pass
    return found


def reap(project: Path, name: str, wait_s: float = 3.0) -> list[dict]:
    """Record, then end (by pid: the benchmark started them), the stage's processes still alive
    ``wait_s`` after it exited."""
    import psutil

    time.sleep(wait_s)
    left = []
    for p in stage_processes(project, name):
        try:
            left.append({"pid": p.pid, "ppid": p.ppid(), "rss_mb": round(p.memory_info().rss / MB, 1),
                         "status": p.status()})
            p.terminate()
        except psutil.Error:
            pass
    return left
