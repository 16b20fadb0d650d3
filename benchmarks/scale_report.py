"""``bench_scale.py``'s verdict: each target (memory, throughput, progress shown, interrupted
stages that leave nothing behind, the resumed download) passed or failed, and the per-stage table."""

from __future__ import annotations

from _common import table
from scale_interrupts import PREPARE_INTERRUPTS
from scale_run import MB

LONG_STAGE_S = 30.0
SILENT_S = 60.0  # a longer stretch without any output looks hung


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
        "stream": (f"{s['stream']['audio_s_per_s']} s of audio/s ({s['stream']['audio_minutes']} min)"
                   if "stream" in s else "-"),
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
              f"{t['conf_epochs']} epochs x {t.get('members', 1)} model(s) = "
              f"{t['extrapolated_full_training_s'] / 3600:.1f} h")
    print()
    for row in results["targets"]:
        print(f"{'PASS' if row['pass'] else 'FAIL'}  {row['target']}: {row['measured']}")
