"""Full scale: the DEFAULT pipeline against a full-size stand-in of the Speech Commands archive,
downloaded over HTTP from 127.0.0.1 (with a cut connection and a resume), stage by stage.

The archive and the canonical test set are built by ``make_fullsize_archive.py`` (105,829
perturbed copies of the 3,360 real clips, the real archive's layout, counts and size class;
``--scale`` < 1 for a quick trial) and served by a local HTTP server that honours ``Range``
and drops the first archive transfer after ``--cut`` of its bytes. The pipeline runs in a
temporary copy of the project (conf/, src/, dvc.yaml, .dvc/config, .dvcignore, .gitignore; git
init; params.yaml composed with ``kws-params``' composition) with conf/'s defaults
(``data=speech_commands``, the served recipe); only ``data.source``, ``data.sha256`` and
``data.canonical_test.{source,sha256,size}`` point at the local server, and training is bounded
(``train.epochs`` x ``train.steps_per_epoch``) — the full training time is extrapolated.

Every stage is its own subprocess (``python -m kws.stages.<name>`` in the project, under a
pseudo-terminal so progress bars draw as they would for a user), and for each the benchmark
records the wall time, the peak RSS of its process tree (psutil, every 0.2 s; PSS too), the
disk its outputs use, its throughput, the longest stretch without any output and whether its
log shows a progress bar with an ETA. It also interrupts ``prepare`` once its training split is
40 % featurized (complete features from the previous run present), twice: SIGINT to its process
group (Ctrl-C) and SIGTERM to its main process (``kill``); and ``train`` (SIGTERM, 8 s after its
progress bar appears: in the first epoch; no model yet). It checks that the outputs are the old complete ones or absent —
never partial —, records what was left behind (temp dirs, still-running processes, MLflow runs
left RUNNING; leftover processes are then ended by pid) and runs the stage again.

    .venv/bin/python benchmarks/bench_scale.py --scale 0.02 --work /tmp/kws-scale/trial   # trial, ~5 min
    .venv/bin/python benchmarks/bench_scale.py                                            # full size, ~40-60 min

Targets (PASS/FAIL): download peak RSS <= 200 MB; prepare >= 800 clips/s (featurized examples
per second of the whole stage); no stage above 6 GB peak RSS; every stage longer than 30 s shows
progress with an ETA, and no stage is silent for more than 60 s; an interrupted prepare / train
stops within 60 s, leaves old-or-absent outputs and re-runs cleanly; an interrupted stage leaves
no processes, temp dirs or RUNNING MLflow runs behind; the cut download resumes from its partial
file (0 bytes fetched twice).
Results: ``benchmarks/results/scale.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import pty
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, machine_info, table, write_result  # noqa: E402

ARCHIVE_NAME = "speech_commands_v0.02.tar.gz"
CANONICAL_NAME = "speech_commands_test_set_v0.02.tar.gz"
MB = 1e6
ETA = re.compile(r"\d+:\d\d<\d+:\d\d")  # tqdm's "[elapsed<remaining, rate]"
LONG_STAGE_S = 30.0
SILENT_S = 60.0  # a longer stretch without any output looks hung


# --------------------------------------------------------------------------- HTTP server with Range
class _State:
    def __init__(self, root: Path):
        self.root = root
        self.cut: dict[str, int] = {}  # path -> drop the connection after this many body bytes, once
        self.log: list[dict] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        state: _State = self.server.state  # type: ignore[attr-defined]
        name = self.path.lstrip("/")
        path = state.root / name
        if "/" in name or not path.is_file():
            self.send_error(404, "not found")
            return
        size = path.stat().st_size
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        entry = {"path": self.path, "range_start": start if rng else None, "status": status, "t0": time.time()}
        self.send_response(status)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(size - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        with state.lock:
            cut = state.cut.pop(self.path, None)
        count = size - start if cut is None else min(cut, size - start)
        sent = 0
        try:
            with open(path, "rb") as fh:
                while sent < count:
                    n = self.connection.sendfile(fh, start + sent, count - sent)
                    if not n:
                        break
                    sent += n
        except OSError as err:  # the client went away
            entry["error"] = str(err)
        entry.update(sent=sent, t1=time.time(), cut=cut is not None)
        with state.lock:
            state.log.append(entry)
        if cut is not None:
            self.close_connection = True  # the socket closes before Content-Length bytes


def start_server(root: Path) -> tuple[ThreadingHTTPServer, str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = _State(root)  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, args=(0.1,), daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


# --------------------------------------------------------------------------- a monitored stage run
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


# --------------------------------------------------------------------------- helpers
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


def make_project(work: Path, overrides: list[str], env: dict) -> Path:
    from kws.config import compose
    from tests.support.workspace import copy_pipeline

    root = work / "project"
    if root.exists():
        shutil.rmtree(root)
    return copy_pipeline(REPO, root, compose(overrides, conf_dir=REPO / "conf"), overrides, env=env)


def ensure_archive(archive_dir: Path, scale: float, workers: int, logs: Path) -> tuple[dict, dict | None]:
    """The stand-in tarballs for ``scale`` (built when missing); returns (manifest, build timing)."""
    manifest_file = archive_dir / "manifest.json"
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("scale") == scale and (archive_dir / ARCHIVE_NAME).is_file():
            print(f"reusing the stand-in archive in {archive_dir} (scale {scale:g})", flush=True)
            return manifest, None
    print(f"building the stand-in archive (scale {scale:g}) into {archive_dir} ...", flush=True)
    t0 = time.perf_counter()
    with open(logs / "make_fullsize_archive.log", "w") as log:
        subprocess.run([sys.executable, str(Path(__file__).with_name("make_fullsize_archive.py")), "--out",
                        str(archive_dir), "--scale", str(scale), "--workers", str(workers)],
                       check=True, stdout=log, stderr=subprocess.STDOUT)
    manifest = json.loads(manifest_file.read_text())
    return manifest, {"seconds": round(time.perf_counter() - t0, 1)}


def mlflow_run_statuses(db: Path) -> dict:
    if not db.is_file():
        return {}
    with sqlite3.connect(db) as con:
        return dict(con.execute("select status, count(*) from runs group by status").fetchall())


# --------------------------------------------------------------------------- the benchmark
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="archive size (1.0 = full; 0.02 for a trial)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kws-scale/bench"), help="project copy, logs")
    parser.add_argument("--archive-dir", type=Path, default=None,
                        help="stand-in tarballs (default /tmp/kws-scale/archive-<scale>; built when missing)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="archive generation workers")
    parser.add_argument("--epochs", type=int, default=2, help="train.epochs for the bounded training")
    parser.add_argument("--steps-per-epoch", type=int, default=150, help="train.steps_per_epoch")
    parser.add_argument("--cut", type=float, default=0.4, help="drop the first archive transfer after this share")
    parser.add_argument("--no-interrupts", action="store_true", help="skip the interrupted prepare/train runs")
    parser.add_argument("--keep", action="store_true", help="keep the project copy (dataset, features) afterwards")
    parser.add_argument("--out", default="scale.json")
    args = parser.parse_args(argv)
    # Started in the background by a non-interactive shell (`nohup ... &`), this process and its
    # children would ignore SIGINT: the stages get the default Ctrl-C behaviour back.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.perf_counter()
    work = args.work.resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    archive_dir = (args.archive_dir or Path(f"/tmp/kws-scale/archive-{args.scale:g}")).resolve()
    manifest, build = ensure_archive(archive_dir, args.scale, args.workers, logs)
    size = manifest["archive"]["bytes"]
    print(f"archive {size:,} bytes ({manifest['archive']['clips']:,} clips), canonical "
          f"{manifest['canonical']['bytes']:,} bytes ({manifest['canonical']['clips']:,} clips)", flush=True)

    httpd, base = start_server(archive_dir)
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update({
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        "PYTHONPATH": str(work / "project" / "src"),  # the project copy's code, whatever changes in the repo meanwhile
        "KWS_LOG_LEVEL": "INFO", "TF_CPP_MIN_LOG_LEVEL": "2", "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost", "TERM": "xterm", "COLUMNS": "140",
    })
    overrides = [
        f"data.source={base}/{ARCHIVE_NAME}", f"data.sha256={manifest['archive']['sha256']}",
        f"data.canonical_test.source={base}/{CANONICAL_NAME}",
        f"data.canonical_test.sha256={manifest['canonical']['sha256']}",
        f"data.canonical_test.size={manifest['canonical']['bytes']}",
        f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps_per_epoch}",
    ]
    project = make_project(work, overrides, env)
    from kws.config import compose

    defaults = compose([], conf_dir=project / "conf")
    data = project / "data"
    results: dict = {
        "scale": args.scale, "archive": manifest, "archive_build": build, "overrides": overrides,
        "bounded_training": {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch},
        "stages": {}, "interrupts": {},
    }
    stages = results["stages"]

    def stage(name: str, tag: str | None = None, interrupt=None) -> dict:
        tag = tag or name
        print(f"--- {tag}", flush=True)
        run = Run(tag, [sys.executable, "-m", f"kws.stages.{name}"], project, env, logs / f"{tag}.log")
        r = run.monitor(interrupt)
        r["output_tail"] = _plain(run.output())[-600:]
        print(f"    rc {r['rc']}, {r['wall_s']} s, peak RSS {r['peak_rss_mb']} MB (PSS {r['peak_pss_mb']} MB)",
              flush=True)
        return r

    # ---- download, with a cut connection and a resume
    httpd.state.cut[f"/{ARCHIVE_NAME}"] = int(size * args.cut)  # type: ignore[attr-defined]
    r = stage("download")
    _check(r)
    served = [e for e in httpd.state.log if e["path"] == f"/{ARCHIVE_NAME}"]  # type: ignore[attr-defined]
    sent = sum(e["sent"] for e in served)
    transfer_s = (served[-1]["t1"] - served[0]["t0"]) if served else None
    r.pop("output_tail")
    resumed = re.findall(r"resuming \S+ at byte (\d+)", _plain((logs / "download.log").read_text()))
    info = json.loads((data / "raw" / "speech_commands.json").read_text())
    r.update({
        "requests": [{k: e.get(k) for k in ("range_start", "status", "sent", "cut")} for e in served],
        "archive_bytes": size, "bytes_served": sent, "bytes_refetched": sent - size,
        "resumed_at_byte": int(resumed[0]) if resumed else None,
        "cut_after_bytes": served[0]["sent"] if served else None,
        "transfer_s": round(transfer_s, 1) if transfer_s else None,
        "transfer_mb_s": round(size / MB / transfer_s, 1) if transfer_s else None,
        "files": info["n_files"], "clips": manifest["archive"]["clips"],
        "clips_per_s": round(manifest["archive"]["clips"] / r["wall_s"], 1),
        "disk": disk(data / "raw" / "speech_commands", data / "raw" / "canonical_test"),
        "cache_left": disk(data / "raw" / ".cache"),
    })
    r["resumed_from_partial"] = bool(served and r["resumed_at_byte"] == served[0]["sent"] and r["bytes_refetched"] == 0)
    stages["download"] = r
    print(f"    served {sent:,} bytes for a {size:,}-byte archive: cut after {r['cut_after_bytes']:,}, resumed at "
          f"{r['resumed_at_byte']}, re-fetched {r['bytes_refetched']:,} bytes", flush=True)

    # ---- prepare (measured), then interrupted (old outputs present), then again
    r = stage("prepare")
    _check(r)
    meta = json.loads((data / "features" / "meta.json").read_text())
    examples = sum(meta["counts"].values())
    r.update({
        "clips_found": meta["clips_found"], "examples": examples, "counts": meta["counts"],
        "source_clips_per_s": round(meta["clips_found"] / r["wall_s"], 1),
        "extractions_per_s": round(examples / r["wall_s"], 1),
        "workers": int(defaults.prepare.workers) or os.cpu_count(),
        "disk": disk(data / "features"),
    })
    r.pop("output_tail")
    stages["prepare"] = r
    print(f"    {examples:,} examples from {meta['clips_found']:,} clips: {r['extractions_per_s']} extractions/s, "
          f"{r['source_clips_per_s']} source clips/s", flush=True)
    if not args.no_interrupts:
        results["interrupts"]["prepare"] = interrupt_prepare(stage, project, meta)

    # ---- train: interrupted first (no model yet), then the measured run
    model = data / "model"
    if not args.no_interrupts:
        # 8 s after train's progress bar appears: inside the first epoch (150 bounded steps take ~12 s)
        ti = stage("train", "train_interrupted", interrupt=(r"train: +\d+%\|", 8.0, signal.SIGTERM, False))
        state = snapshot(model)
        left = leftovers(data, "model")
        complete = state is not None and {"model.keras", "model.tflite", "labels.json", "run.json"} <= {
            Path(k).name for k in state}
        results["interrupts"]["train"] = {
            "signal": "SIGTERM to the stage process (kill), 8 s after its progress bar appeared (epoch 1)",
            "interrupted": _slim(ti), "outputs_after": "absent" if state is None else ("complete" if complete else "PARTIAL"),
            "temp_left_behind": left, "stage_processes_left": reap(project, "train"),
            "mlflow_runs_by_status": mlflow_run_statuses(project / "mlflow.db"),
        }
    r = stage("train")
    _check(r)
    out = _plain((logs / "train.log").read_text())
    bundle_info = json.loads((model / "model_info.json").read_text())
    per_step = seconds_per_step(out, bundle_info["training"]["steps_per_epoch"])
    n_train = meta["counts"]["train"]
    batch = int(defaults.train.batch_size)
    full_steps = math.ceil(n_train / batch)
    s_step = per_step[-1] if per_step else None
    r.pop("output_tail")
    r.update({
        "epochs": args.epochs, "steps_per_epoch": bundle_info["training"].get("steps_per_epoch"),
        "s_per_step_by_epoch": per_step, "s_per_step": s_step,
        "train_examples": n_train, "full_epoch_steps": full_steps, "conf_epochs": int(defaults.train.epochs),
        "examples_per_s": round(batch / s_step, 1) if s_step else None,
        "extrapolated_full_training_s": round(s_step * full_steps * int(defaults.train.epochs)) if s_step else None,
        "disk": disk(model), "mlruns_disk": disk(project / "mlruns"),
    })
    stages["train"] = r
    if r["extrapolated_full_training_s"]:
        print(f"    {s_step:.3f} s/step; a whole epoch is {full_steps:,} steps; {defaults.train.epochs} epochs "
              f"= {r['extrapolated_full_training_s'] / 3600:.1f} h on this machine", flush=True)
    if not args.no_interrupts:
        it = results["interrupts"]["train"]
        it["rerun"] = _slim(r)
        it["pass"] = bool(_stopped(it["interrupted"]) and it["outputs_after"] != "PARTIAL" and r["rc"] == 0)

    # ---- evaluate (test split + the canonical stand-in), promote
    r = stage("evaluate")
    _check(r)
    metrics = json.loads((project / "reports" / "evaluate" / "metrics.json").read_text())
    canon = metrics.get("canonical") or {}
    n_scored = metrics["test"]["n_test"] + int(canon.get("n", 0))
    r.pop("output_tail")
    r.update({"n_test": metrics["test"]["n_test"], "n_canonical": canon.get("n"),
              "test_accuracy": metrics["test"]["accuracy"], "canonical_accuracy": canon.get("accuracy"),
              "canonical_latency_ms_p50": canon.get("latency_ms_p50"),
              "clips_per_s": round(n_scored / r["wall_s"], 1), "disk": disk(project / "reports" / "evaluate")})
    stages["evaluate"] = r
    mlruns_before = disk(project / "mlruns")["allocated_bytes"]
    r = stage("promote")
    _check(r)
    r.pop("output_tail")
    promotion = json.loads((project / "reports" / "promotion.json").read_text())
    r.update({"promoted": promotion.get("promoted"), "registered_version": promotion.get("registered_version"),
              "disk": disk(project / "serving" / "model"),
              "mlruns_added_mb": round((disk(project / "mlruns")["allocated_bytes"] - mlruns_before) / MB, 1)})
    stages["promote"] = r
    httpd.shutdown()

    results["targets"] = targets(results)
    results["machine"] = machine_info()
    results["total_s"] = round(time.perf_counter() - started, 1)
    results["work"] = str(work)
    path = write_result(args.out, results)
    report(results)
    print(f"wrote {path} ({results['total_s'] / 60:.1f} min)")
    if not args.keep:
        shutil.rmtree(project, ignore_errors=True)
        print(f"removed {project} (logs kept in {logs})")
    return 0 if all(t["pass"] for t in results["targets"]) else 1


PREPARE_INTERRUPTS = (
    ("prepare_sigint", signal.SIGINT, True, "SIGINT to the process group (Ctrl-C)"),
    ("prepare_sigterm", signal.SIGTERM, False, "SIGTERM to the stage process only (kill)"),
)


def seconds_per_step(train_log: str, steps_per_epoch: int) -> list[float]:
    """Per epoch, seconds per training step from train's epoch lines ("epoch 1/2: ... (14.6 s/epoch;
    ..."): the mean epoch time so far (validation passes and the first epoch's start-up included)
    over the steps of an epoch; the last value averages the whole run."""
    return [round(float(v) / steps_per_epoch, 4) for v in re.findall(r"epoch \d+/\d+: .*?\((\d+(?:\.\d+)?) s/epoch", train_log)]


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


def _stopped(r: dict) -> bool:
    """The signal stopped the stage (non-zero exit) within 60 s, without the watchdog's SIGKILL."""
    return r["rc"] not in (0, -signal.SIGKILL) and (r.get("exit_after_signal_s") or 1e9) <= 60


def interrupt_prepare(stage, project: Path, meta: dict) -> dict:
    """Interrupt prepare once its training split is 40 % featurized (complete features from the
    previous run in place), by each signal of :data:`PREPARE_INTERRUPTS`; then run it again."""
    data = project / "data"
    out: dict = {}
    for tag, sig, group, desc in PREPARE_INTERRUPTS:
        before = snapshot(data / "features")
        known = {x["path"] for x in leftovers(data, "features")}
        r = stage("prepare", tag, interrupt=(r"train:\s+[4-9]\d%", 0.0, sig, group))
        procs = reap(project, "prepare")
        after = snapshot(data / "features")
        out[tag] = {
            "signal": f"{desc}, once the training split was 40 % featurized", "interrupted": _slim(r),
            "outputs_after": "old, complete" if after == before else ("absent" if after is None else "CHANGED"),
            "temp_left_behind": [x for x in leftovers(data, "features") if x["path"] not in known],
            "stage_processes_left": procs,
        }
        print(f"    {tag}: rc {r['rc']}, exit {r.get('exit_after_signal_s')} s after the signal; outputs "
              f"{out[tag]['outputs_after']}; temp dirs left {len(out[tag]['temp_left_behind'])}; "
              f"processes left {len(procs)}", flush=True)
    rr = stage("prepare", "prepare_rerun")
    meta2 = json.loads((data / "features" / "meta.json").read_text()) if (data / "features" / "meta.json").is_file() else {}
    out["rerun"] = _slim(rr)
    out["rerun_same_test_split"] = meta2.get("test_digest") == meta["test_digest"] and meta2.get("counts") == meta["counts"]
    runs = [out[tag] for tag, *_ in PREPARE_INTERRUPTS]
    out["pass"] = bool(all(_stopped(i["interrupted"]) and i["outputs_after"] != "CHANGED" for i in runs)
                       and rr["rc"] == 0 and out["rerun_same_test_split"])
    return out


def _plain(text: str) -> str:
    """Terminal output as lines: carriage-return updates kept as separate lines, colours removed."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r\n", "\n").replace("\r", "\n")


def _slim(r: dict) -> dict:
    return {k: v for k, v in r.items() if k in ("rc", "wall_s", "peak_rss_mb", "signal_after_s", "exit_after_signal_s",
                                                "output_tail")}


def _check(r: dict) -> None:
    if r["rc"] != 0:
        print(_plain(Path(r["log"]).read_text())[-4000:], file=sys.stderr)
        raise SystemExit(f"stage failed (rc {r['rc']}): see {r['log']}")


def targets(results: dict) -> list[dict]:
    s, it = results["stages"], results["interrupts"]
    rows = [
        {"target": "download peak RSS <= 200 MB", "measured": f"{s['download']['peak_rss_mb']} MB",
         "pass": s["download"]["peak_rss_mb"] <= 200},
        {"target": "prepare >= 800 clips/s (featurized examples / stage wall time)",
         "measured": f"{s['prepare']['extractions_per_s']} clips/s ({s['prepare']['source_clips_per_s']} archive clips/s)",
         "pass": s["prepare"]["extractions_per_s"] >= 800},
        {"target": "no stage > 6 GB peak RSS (process tree)",
         "measured": ", ".join(f"{k} {v['peak_rss_mb'] / 1000:.2f} GB" for k, v in s.items()),
         "pass": all(v["peak_rss_mb"] <= 6000 for v in s.values())},
        {"target": f"every stage > {LONG_STAGE_S:g} s shows progress with an ETA",
         "measured": ", ".join(f"{k} {'ETA' if v['eta_in_log'] else 'no ETA'} (longest silence {v['longest_silence_s']} s)"
                               for k, v in s.items() if v["wall_s"] > LONG_STAGE_S),
         "pass": all(v["eta_in_log"] for v in s.values() if v["wall_s"] > LONG_STAGE_S)},
        {"target": f"no stretch > {SILENT_S:g} s without any output (a long step without progress)",
         "measured": ", ".join(f"{k} {v['longest_silence_s']:.0f} s" for k, v in s.items()),
         "pass": all(v["longest_silence_s"] <= SILENT_S for v in s.values())},
        {"target": "cut download resumes from the partial file (0 bytes re-fetched)",
         "measured": f"cut at {s['download']['cut_after_bytes']:,}, resumed at {s['download']['resumed_at_byte']}, "
                     f"re-fetched {s['download']['bytes_refetched']:,} B",
         "pass": s["download"]["resumed_from_partial"]},
    ]
    if "prepare" in it:
        p = it["prepare"]
        runs = {tag: p[tag] for tag, *_ in PREPARE_INTERRUPTS if tag in p}
        rows.append({"target": "interrupted prepare leaves old-or-absent outputs and re-runs cleanly",
                     "measured": "; ".join(f"{v['signal'].split(' (')[0]}: rc {v['interrupted']['rc']}, exit "
                                           f"{v['interrupted'].get('exit_after_signal_s')} s after, outputs {v['outputs_after']}"
                                           for v in runs.values()) + f"; rerun rc {p['rerun']['rc']}, same test split "
                                                                    f"{p['rerun_same_test_split']}",
                     "pass": p["pass"]})
    if "train" in it:
        t = it["train"]
        rows.append({"target": "interrupted train leaves old-or-absent outputs and re-runs cleanly",
                     "measured": f"{t['signal'].split(' (')[0]}: rc {t['interrupted']['rc']}, exit "
                                 f"{t['interrupted'].get('exit_after_signal_s')} s after; outputs {t['outputs_after']}; "
                                 f"rerun rc {t['rerun']['rc']}",
                     "pass": t["pass"]})
    runs = {**{tag: it["prepare"][tag] for tag, *_ in PREPARE_INTERRUPTS if tag in it.get("prepare", {})},
            **({"train_sigterm": it["train"]} if "train" in it else {})}
    if runs:
        rows.append({"target": "an interrupted stage leaves no processes, temp dirs or open runs behind",
                     "measured": "; ".join(
                         f"{tag}: {len(v['stage_processes_left'])} process(es), "
                         f"{len(v['temp_left_behind'])} temp dir(s) ({sum(x['bytes'] for x in v['temp_left_behind']) / MB:.0f} MB)"
                         + (f", MLflow runs {v['mlflow_runs_by_status']}" if "mlflow_runs_by_status" in v else "")
                         for tag, v in runs.items()),
                     "pass": all(not v["stage_processes_left"] and not v["temp_left_behind"]
                                 and not v.get("mlflow_runs_by_status", {}).get("RUNNING") for v in runs.values())})
    return rows


def report(results: dict) -> None:
    s = results["stages"]
    thr = {
        "download": f"{s['download'].get('transfer_mb_s')} MB/s transfer, {s['download']['clips_per_s']} clips/s",
        "prepare": f"{s['prepare']['source_clips_per_s']} source clips/s, {s['prepare']['extractions_per_s']} extractions/s",
        "train": (f"{s['train']['s_per_step']:.3f} s/step ({s['train']['examples_per_s']} examples/s)"
                  if s["train"]["s_per_step"] else "-"),
        "evaluate": f"{s['evaluate']['clips_per_s']} clips/s",
        "promote": "-",
    }
    rows = [[k, f"{v['wall_s']:.0f}", f"{v['peak_rss_mb']:.0f}", f"{v['peak_pss_mb']:.0f}",
             f"{v['disk']['allocated_bytes'] / MB:,.0f}", thr[k], "yes" if v["eta_in_log"] else "no",
             f"{v['longest_silence_s']:.0f}"] for k, v in s.items()]
    print()
    print(table(rows, ["stage", "wall s", "peak RSS MB", "PSS MB", "disk MB", "throughput", "ETA", "max silence s"]))
    t = s["train"]
    if t.get("extrapolated_full_training_s"):
        print(f"\nfull training, extrapolated: {t['s_per_step']:.3f} s/step x {t['full_epoch_steps']:,} steps x "
              f"{t['conf_epochs']} epochs = {t['extrapolated_full_training_s'] / 3600:.1f} h")
    print()
    for row in results["targets"]:
        print(f"{'PASS' if row['pass'] else 'FAIL'}  {row['target']}: {row['measured']}")


if __name__ == "__main__":
    raise SystemExit(main())
