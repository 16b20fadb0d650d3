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
(``train.epochs`` x ``train.steps_per_epoch``) — the full training time is extrapolated (every
epoch of every ensemble member). The stages run in ``dvc.yaml``'s order: download, prepare, train,
evaluate, stream (the generated validation and test streams), promote.

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
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, machine_info, write_result  # noqa: E402
from scale_http import start_server  # noqa: E402
from scale_interrupts import interrupt_prepare, interrupt_train, slim, stopped  # noqa: E402
from scale_report import report, targets  # noqa: E402
from scale_run import MB, Run, disk, plain  # noqa: E402

ARCHIVE_NAME = "speech_commands_v0.02.tar.gz"
CANONICAL_NAME = "speech_commands_test_set_v0.02.tar.gz"


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


# --------------------------------------------------------------------------- the benchmark
class Bench:
    """The project copy under test, its stand-in archive server, and the results so far."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = args.work.resolve()
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        archive_dir = (args.archive_dir or Path(f"/tmp/kws-scale/archive-{args.scale:g}")).resolve()
        self.manifest, build = ensure_archive(archive_dir, args.scale, args.workers, self.logs)
        self.size = self.manifest["archive"]["bytes"]
        print(f"archive {self.size:,} bytes ({self.manifest['archive']['clips']:,} clips), canonical "
              f"{self.manifest['canonical']['bytes']:,} bytes ({self.manifest['canonical']['clips']:,} clips)",
              flush=True)
        self.httpd, base = start_server(archive_dir)
        self.env = stage_env(self.work)
        self.overrides = local_overrides(base, self.manifest, args)
        self.project = make_project(self.work, self.overrides, self.env)
        from kws.config import compose

        self.defaults = compose([], conf_dir=self.project / "conf")
        self.data = self.project / "data"
        self.results: dict = {
            "scale": args.scale, "archive": self.manifest, "archive_build": build, "overrides": self.overrides,
            "bounded_training": {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch},
            "stages": {}, "interrupts": {},
        }
        self.stages = self.results["stages"]

    def stage(self, name: str, tag: str | None = None, interrupt=None) -> dict:
        tag = tag or name
        print(f"--- {tag}", flush=True)
        run = Run(tag, [sys.executable, "-m", f"kws.stages.{name}"], self.project, self.env, self.logs / f"{tag}.log")
        r = run.monitor(interrupt)
        r["output_tail"] = plain(run.output())[-600:]
        print(f"    rc {r['rc']}, {r['wall_s']} s, peak RSS {r['peak_rss_mb']} MB (PSS {r['peak_pss_mb']} MB)",
              flush=True)
        return r

    def measured(self, name: str) -> dict:
        """``name`` run once, which must succeed; its log tail dropped from the result."""
        r = self.stage(name)
        _check(r)
        r.pop("output_tail")
        return r


def stage_env(work: Path) -> dict:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update({
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        "PYTHONPATH": str(work / "project" / "src"),  # the project copy's code, whatever changes in the repo meanwhile
        "KWS_LOG_LEVEL": "INFO", "TF_CPP_MIN_LOG_LEVEL": "2", "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost", "TERM": "xterm", "COLUMNS": "140",
    })
    return env


def local_overrides(base: str, manifest: dict, args: argparse.Namespace) -> list[str]:
    """The default recipe with the archives from the local server and training bounded."""
    return [
        f"data.source={base}/{ARCHIVE_NAME}", f"data.sha256={manifest['archive']['sha256']}",
        f"data.canonical_test.source={base}/{CANONICAL_NAME}",
        f"data.canonical_test.sha256={manifest['canonical']['sha256']}",
        f"data.canonical_test.size={manifest['canonical']['bytes']}",
        f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps_per_epoch}",
    ]


def bench_download(b: Bench) -> None:
    """download, with the connection cut after ``--cut`` of the archive and a resume."""
    b.httpd.state.cut[f"/{ARCHIVE_NAME}"] = int(b.size * b.args.cut)  # type: ignore[attr-defined]
    r = b.measured("download")
    served = [e for e in b.httpd.state.log if e["path"] == f"/{ARCHIVE_NAME}"]  # type: ignore[attr-defined]
    sent = sum(e["sent"] for e in served)
    transfer_s = (served[-1]["t1"] - served[0]["t0"]) if served else None
    resumed = re.findall(r"resuming \S+ at byte (\d+)", plain((b.logs / "download.log").read_text()))
    info = json.loads((b.data / "raw" / "speech_commands.json").read_text())
    clips = b.manifest["archive"]["clips"]
    r.update({
        "requests": [{k: e.get(k) for k in ("range_start", "status", "sent", "cut")} for e in served],
        "archive_bytes": b.size, "bytes_served": sent, "bytes_refetched": sent - b.size,
        "resumed_at_byte": int(resumed[0]) if resumed else None,
        "cut_after_bytes": served[0]["sent"] if served else None,
        "transfer_s": round(transfer_s, 1) if transfer_s else None,
        "transfer_mb_s": round(b.size / MB / transfer_s, 1) if transfer_s else None,
        "files": info["n_files"], "clips": clips, "clips_per_s": round(clips / r["wall_s"], 1),
        "disk": disk(b.data / "raw" / "speech_commands", b.data / "raw" / "canonical_test"),
        "cache_left": disk(b.data / "raw" / ".cache"),
    })
    r["resumed_from_partial"] = bool(served and r["resumed_at_byte"] == served[0]["sent"]
                                     and r["bytes_refetched"] == 0)
    b.stages["download"] = r
    print(f"    served {sent:,} bytes for a {b.size:,}-byte archive: cut after {r['cut_after_bytes']:,}, resumed at "
          f"{r['resumed_at_byte']}, re-fetched {r['bytes_refetched']:,} bytes", flush=True)


def bench_prepare(b: Bench) -> dict:
    """prepare measured, then interrupted (its old outputs present) and run again; returns its meta."""
    r = b.measured("prepare")
    meta = json.loads((b.data / "features" / "meta.json").read_text())
    examples = sum(meta["counts"].values())
    r.update({
        "clips_found": meta["clips_found"], "examples": examples, "counts": meta["counts"],
        "source_clips_per_s": round(meta["clips_found"] / r["wall_s"], 1),
        "extractions_per_s": round(examples / r["wall_s"], 1),
        "workers": int(b.defaults.prepare.workers) or os.cpu_count(),
        "disk": disk(b.data / "features"),
    })
    b.stages["prepare"] = r
    print(f"    {examples:,} examples from {meta['clips_found']:,} clips: {r['extractions_per_s']} extractions/s, "
          f"{r['source_clips_per_s']} source clips/s", flush=True)
    if not b.args.no_interrupts:
        b.results["interrupts"]["prepare"] = interrupt_prepare(b.stage, b.project, meta)
    return meta


def bench_train(b: Bench, meta: dict) -> None:
    """train (after an interrupted try) bounded, and the full training extrapolated from its pace:
    every step of every epoch of every ensemble member."""
    from kws.training.settings import member_seeds

    if not b.args.no_interrupts:
        b.results["interrupts"]["train"] = interrupt_train(b.stage, b.project)
    r = b.measured("train")
    model = b.data / "model"
    bundle_info = json.loads((model / "model_info.json").read_text())
    per_step = seconds_per_step(plain((b.logs / "train.log").read_text()), bundle_info["training"]["steps_per_epoch"])
    n_train, batch = meta["counts"]["train"], int(b.defaults.train.batch_size)
    members = len(member_seeds(b.defaults))  # the models the train stage trains, one seed each
    full_steps, epochs = math.ceil(n_train / batch), int(b.defaults.train.epochs)
    s_step = per_step[-1] if per_step else None
    r.update({
        "epochs": b.args.epochs, "steps_per_epoch": bundle_info["training"].get("steps_per_epoch"),
        "s_per_step_by_epoch": per_step, "s_per_step": s_step, "members": members,
        "train_examples": n_train, "full_epoch_steps": full_steps, "conf_epochs": epochs,
        "examples_per_s": round(batch / s_step, 1) if s_step else None,
        "extrapolated_full_training_s": round(s_step * full_steps * epochs * members) if s_step else None,
        "disk": disk(model), "mlruns_disk": disk(b.project / "mlruns"),
    })
    b.stages["train"] = r
    if r["extrapolated_full_training_s"]:
        print(f"    {s_step:.3f} s/step; a whole epoch is {full_steps:,} steps; {epochs} epochs x {members} "
              f"model(s) = {r['extrapolated_full_training_s'] / 3600:.1f} h on this machine", flush=True)
    if not b.args.no_interrupts:
        it = b.results["interrupts"]["train"]
        it["rerun"] = slim(r)
        it["pass"] = bool(stopped(it["interrupted"]) and it["outputs_after"] != "PARTIAL" and r["rc"] == 0)


def bench_evaluate(b: Bench) -> None:
    """evaluate: the test split and the canonical stand-in."""
    r = b.measured("evaluate")
    metrics = json.loads((b.project / "reports" / "evaluate" / "metrics.json").read_text())
    canon = metrics.get("canonical") or {}
    n_scored = metrics["test"]["n_test"] + int(canon.get("n", 0))
    r.update({"n_test": metrics["test"]["n_test"], "n_canonical": canon.get("n"),
              "test_accuracy": metrics["test"]["accuracy"], "canonical_accuracy": canon.get("accuracy"),
              "canonical_latency_ms_p50": canon.get("latency_ms_p50"),
              "clips_per_s": round(n_scored / r["wall_s"], 1), "disk": disk(b.project / "reports" / "evaluate")})
    b.stages["evaluate"] = r


def bench_stream(b: Bench) -> None:
    """stream: validation and test streams generated from the splits, scanned, the sweep."""
    r = b.measured("stream")
    metrics = json.loads((b.project / "reports" / "stream" / "metrics.json").read_text())
    audio_s = 60 * sum(metrics["streams"][split]["minutes"] for split in ("validation", "test"))
    r.update({"audio_minutes": round(audio_s / 60, 1), "audio_s_per_s": round(audio_s / r["wall_s"], 1),
              "seconds": metrics.get("seconds"), "recall": metrics["test"]["recall"],
              "false_accepts_per_hour": metrics["test"]["false_accepts_per_hour"],
              "disk": disk(b.project / "reports" / "stream")})
    b.stages["stream"] = r


def bench_promote(b: Bench) -> None:
    mlruns_before = disk(b.project / "mlruns")["allocated_bytes"]
    r = b.measured("promote")
    promotion = json.loads((b.project / "reports" / "promotion.json").read_text())
    r.update({"promoted": promotion.get("promoted"), "registered_version": promotion.get("registered_version"),
              "disk": disk(b.project / "serving" / "model"),
              "mlruns_added_mb": round((disk(b.project / "mlruns")["allocated_bytes"] - mlruns_before) / MB, 1)})
    b.stages["promote"] = r


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Started in the background by a non-interactive shell (`nohup ... &`), this process and its
    # children would ignore SIGINT: the stages get the default Ctrl-C behaviour back.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.perf_counter()
    b = Bench(args)
    bench_download(b)
    meta = bench_prepare(b)
    bench_train(b, meta)
    bench_evaluate(b)
    bench_stream(b)
    bench_promote(b)
    b.httpd.shutdown()

    results = b.results
    results["targets"] = targets(results)
    results["machine"] = machine_info()
    results["total_s"] = round(time.perf_counter() - started, 1)
    results["work"] = str(b.work)
    path = write_result(args.out, results)
    report(results)
    print(f"wrote {path} ({results['total_s'] / 60:.1f} min)")
    if not args.keep:
        shutil.rmtree(b.project, ignore_errors=True)
        print(f"removed {b.project} (logs kept in {b.logs})")
    return 0 if all(t["pass"] for t in results["targets"]) else 1


def seconds_per_step(train_log: str, steps_per_epoch: int) -> list[float]:
    """Per epoch, seconds per training step from train's epoch lines ("epoch 1/2: ... (14.6 s/epoch;
    ..."): the mean epoch time so far (validation passes and the first epoch's start-up included)
    over the steps of an epoch; the last value averages the whole run."""
    return [round(float(v) / steps_per_epoch, 4) for v in re.findall(r"epoch \d+/\d+: .*?\((\d+(?:\.\d+)?) s/epoch", train_log)]


def _check(r: dict) -> None:
    if r["rc"] != 0:
        print(plain(Path(r["log"]).read_text())[-4000:], file=sys.stderr)
        raise SystemExit(f"stage failed (rc {r['rc']}): see {r['log']}")


if __name__ == "__main__":
    raise SystemExit(main())
