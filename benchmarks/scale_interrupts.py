"""The interruptions ``bench_scale.py`` makes: ``prepare`` stopped part-way (Ctrl-C to its
process group, ``kill`` to its process) and ``train`` in its first epoch; what each left behind
(outputs old, absent or partial; temp folders; processes; MLflow runs left RUNNING) and whether
the stage then runs again cleanly."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

from scale_run import leftovers, reap, snapshot

PREPARE_INTERRUPTS = (
    ("prepare_sigint", signal.SIGINT, True, "SIGINT to the process group (Ctrl-C)"),
    ("prepare_sigterm", signal.SIGTERM, False, "SIGTERM to the stage process only (kill)"),
)


def stopped(r: dict) -> bool:
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
            "signal": f"{desc}, once the training split was 40 % featurized", "interrupted": slim(r),
            "outputs_after": "old, complete" if after == before else ("absent" if after is None else "CHANGED"),
            "temp_left_behind": [x for x in leftovers(data, "features") if x["path"] not in known],
            "stage_processes_left": procs,
        }
        print(f"    {tag}: rc {r['rc']}, exit {r.get('exit_after_signal_s')} s after the signal; outputs "
              f"{out[tag]['outputs_after']}; temp dirs left {len(out[tag]['temp_left_behind'])}; "
              f"processes left {len(procs)}", flush=True)
    rr = stage("prepare", "prepare_rerun")
    meta2 = json.loads((data / "features" / "meta.json").read_text()) if (data / "features" / "meta.json").is_file() else {}
    out["rerun"] = slim(rr)
    out["rerun_same_test_split"] = meta2.get("test_digest") == meta["test_digest"] and meta2.get("counts") == meta["counts"]
    runs = [out[tag] for tag, *_ in PREPARE_INTERRUPTS]
    out["pass"] = bool(all(stopped(i["interrupted"]) and i["outputs_after"] != "CHANGED" for i in runs)
                       and rr["rc"] == 0 and out["rerun_same_test_split"])
    return out


def slim(r: dict) -> dict:
    return {k: v for k, v in r.items() if k in ("rc", "wall_s", "peak_rss_mb", "signal_after_s", "exit_after_signal_s",
                                                "output_tail")}


def mlflow_run_statuses(db: Path) -> dict:
    if not db.is_file():
        return {}
    with sqlite3.connect(db) as con:
        return dict(con.execute("select status, count(*) from runs group by status").fetchall())


def interrupt_train(stage, project: Path) -> dict:
    """train stopped by SIGTERM 8 s after its progress bar appears (inside the first epoch: 150
    bounded steps take ~12 s), before any model exists; what it left."""
    data = project / "data"
    model = data / "model"
    ti = stage("train", "train_interrupted", interrupt=(r"train: +\d+%\|", 8.0, signal.SIGTERM, False))
    state = snapshot(model)
    complete = state is not None and {"model.keras", "model.tflite", "labels.json", "run.json"} <= {
        Path(k).name for k in state}
    return {
        "signal": "SIGTERM to the stage process (kill), 8 s after its progress bar appeared (epoch 1)",
        "interrupted": slim(ti), "outputs_after": "absent" if state is None else ("complete" if complete else "PARTIAL"),
        "temp_left_behind": leftovers(data, "model"), "stage_processes_left": reap(project, "train"),
        "mlflow_runs_by_status": mlflow_run_statuses(project / "mlflow.db"),
    }
