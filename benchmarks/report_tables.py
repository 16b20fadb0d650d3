"""The tables of figures of the accuracy, prepare, train, serving and scale benchmarks, and the helpers
every table shares; :mod:`report` writes them into the docs (``report_serving`` holds the rest)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


@cache
def result(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def ci(summary: dict) -> str:
    lo, hi = summary["ci95"]
    return f"{pct(summary['accuracy'])} [{pct(lo)}, {pct(hi)}]"


def weakest(per_class: dict) -> str:
    label, v = min(per_class.items(), key=lambda kv: kv[1]["recall"])
    return f"`{label}` {pct(v['recall'])}"


def md(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


# --------------------------------------------------------------------------- real speech
def table_real() -> str:
    """The README's one table: the served recipe vs the original model on the same clips."""
    r = result("real")["candidates"]["recipe"]
    ours, orig = r["ours"], r["original"]
    legacy = result("serving")["inprocess"]["results"]["legacy"]
    # the original model has no _silence_ class: its weakest class is taken among the ones it can answer
    answerable = {k: v for k, v in orig["per_class"].items() if k != "_silence_"}
    rows = [["**served recipe** (`conf/` defaults)", ours["n"], f"**{ci(ours)}**", weakest(ours["per_class"]),
             pct(ours["per_class"]["_unknown_"]["recall"]), pct(ours["per_class"]["_silence_"]["recall"]),
             ms(ours["latency_p50_ms"])],
            ["original model (`../shared/baselines/original_cnn`)", orig["n"], ci(orig), weakest(answerable),
             pct(orig["per_class"]["_unknown_"]["recall"]), "– (no such class)", f"{ms(legacy['p50_ms'])} ¹"]]
    return md(["model", "clips", "accuracy % [95 % CI]", "weakest class", "`_unknown_`", "`_silence_`",
               "p50 ms/clip"], rows) + ("\n\n¹ the original project's way of serving (librosa at 22.05 kHz + Keras "
                                        "`predict` per request), `bench_serving.py`, 1 s clips in-process")


def table_real_variants() -> str:
    """``bench_real.py --variants``: the same folds' clips by runtime and rule, then their streams."""
    r = result("real_variants")["candidates"]["recipe"]
    folds = ", ".join(str(f) for f in r["folds"])
    clips = [[f"{name}{' (served rule)' if name.endswith('clip alone') else ''}", v["n"], ci(v), weakest(v["per_class"]),
              pct(v["per_class"]["_unknown_"]["recall"]), ms(v["latency_p50_ms"])] for name, v in r["variants"].items()]
    return (md([f"clips, folds {folds}", "clips", "accuracy % [95 % CI]", "weakest class", "`_unknown_`",
                "p50 ms/clip"], clips) + "\n\n" + table_real_streams())


def table_real_streams() -> str:
    """The streams of ``bench_real.py --variants``: each runtime's and the original model's, per fold."""
    r = result("real_variants")["candidates"]["recipe"]
    folds = ", ".join(str(f) for f in r["folds"])
    names = {"tflite": "ours, float32", "tflite_int8": "ours, int8", "original": "original model (its own features)"}
    streams = []
    for runtime, st in r["stream"].items():
        per_fold = " / ".join(f"{pct(f['recall'])} @ {f['false_accepts_per_hour']:.0f}" for f in st["per_fold"])
        streams.append([names.get(runtime, runtime), f"{st['hours'] * 60:.0f}", f"**{pct(st['recall'])}**",
                        f"{st['false_accepts_per_hour']:.1f}", pct(st["recall_on_time"]), per_fold])
    return (md([f"test streams, folds {folds}", "minutes", "keyword recall %", "false accepts / h",
                "recall within 0.35 s %", "per fold: recall % @ FA/h"], streams)
            + "\n\nEach fold's operating point is chosen on its own validation streams (30 minutes, "
              "`stream.validation_streams`) for 10 false accepts per hour (`conf/stream`), the original "
              "model's with the same detector and sweep.")


def table_real_per_class() -> str:
    r = result("real")["candidates"]["recipe"]
    ours, orig = r["ours"]["per_class"], r["original"]["per_class"]
    rows = [[f"`{label}`", v["n"], f"{pct(v['recall'])} [{pct(v['ci95'][0])}, {pct(v['ci95'][1])}]",
             pct(orig[label]["recall"]) if label in orig else "–"] for label, v in ours.items()]
    return md(["class", "clips", "served recipe % [95 % CI]", "original model %"], rows)


def table_recipe() -> str:
    """The served recipe's configuration as ``bench_real.py`` recorded it with the figures above."""
    def flat(d: dict, prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            out += flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"`{prefix}{k}={json.dumps(v)}`"]
        return out

    cfg = result("real")["candidates"]["recipe"]["config"]
    groups = {"features": cfg["features"], "model": cfg["model"], "train": cfg["train"],
              "prepare.augment": cfg["augment"],
              "prepare": {k: cfg[k] for k in ("unknown_percentage", "silence_percentage")}}
    return md(["group", "keys"], [[f"`{g}`", " ".join(flat(v))] for g, v in groups.items()])


def _candidate_rows(candidates: dict, source: str | None = None) -> list[list]:
    rows = []
    for name, e in candidates.items():
        o, g = e["ours"], e["original"]
        row = [f"`{name}`", len(e["folds"]), o["n"], ci(o), weakest(o["per_class"]),
               pct(o["per_class"]["_unknown_"]["recall"]), ci(g) if g else "–"]
        rows.append(row + ([f"`{source}`"] if source else [f"{e['params_count']:,}", ms(o["latency_p50_ms"])]))
    return rows


def table_real_candidates() -> str:
    return md(["candidate", "folds", "clips", "accuracy % [95 % CI]", "weakest class", "`_unknown_`",
               "original model, same clips", "params", "p50 ms/clip"],
              _candidate_rows(result("real")["candidates"] | result("real_history")["candidates"]))


def table_screens() -> str:
    """Every screening run: one row per candidate of every ``real_screen*.json``."""
    rows = []
    for path in sorted(RESULTS.glob("real_screen*.json")):
        rows += _candidate_rows(result(path.stem)["candidates"], path.name)
    return md(["candidate", "folds", "clips", "accuracy % [95 % CI]", "weakest class", "`_unknown_`",
               "original model, same clips", "file"], rows)


#: the seed-ensemble comparison: (row, result file, candidate, minutes of validation streams per fold)
ENSEMBLE_ROWS = [
    ("one TC-ResNet, seed 42 (served until 2026-12-06)", "real_variants_tc_resnet", "tc_resnet", 10),
    ("one TC-ResNet, seed 42", "real_screen_val18", "seed42", 30),
    ("two, seeds 42 + 7", "real_screen_seeds", "seeds2", 10),
    ("three, seeds 42 + 7 + 1234 (two threads)", "real_screen_seeds", "seeds3", 10),
    ("three, seeds 42 + 7 + 1234, one thread each (**served**)", "real_variants", "recipe", 30),
    ("four, + seed 99", "real_screen_seeds45", "seeds4", 30),
    ("five, + seeds 99 + 2024", "real_screen_seeds45", "seeds5", 30),
]


def table_ensembles() -> str:
    """One model against seed ensembles on the five folds: clips, and the test streams at each fold's
    operating point chosen on 10 or 30 minutes of validation streams."""
    rows = []
    for label, file, name, minutes in ENSEMBLE_ROWS:
        e = result(file)["candidates"][name]
        o, st = e["ours"], e["stream"]
        rows.append([label, len(e["folds"]), ci(o), weakest(o["per_class"]), pct(o["per_class"]["_unknown_"]["recall"]),
                     pct(o["per_class"]["go"]["recall"]), minutes,
                     f"{pct(st['tflite']['recall'])} % @ {st['tflite']['false_accepts_per_hour']:.1f}",
                     f"{pct(st['tflite_int8']['recall'])} % @ {st['tflite_int8']['false_accepts_per_hour']:.1f}",
                     ms(e["variants"]["int8, clip alone"]["latency_p50_ms"])])
    return md(["real speech, speakers held out", "folds", "clips % [95 % CI]", "weakest class",
               "`_unknown_`", "`go`", "validation min/fold", "test streams float32 (FA/h)", "int8", "int8 p50 ms/clip"],
              rows)


def table_screen_overrides() -> str:
    rows = []
    for path in sorted(RESULTS.glob("real_screen*.json")):
        for name, e in result(path.stem)["candidates"].items():
            rows.append([f"`{name}`", " ".join(f"`{o}`" for o in e["overrides"]) or "(conf/ defaults then)"])
    return md(["candidate", "overrides on `data=speech_commands_real`"], rows)


def _at(s: dict) -> str:
    return f"{pct(s['recall'])} @ {s['false_accepts_per_hour']:.0f}"


def table_screen_streams() -> str:
    """The screens run with ``--variants``, fold by fold, under the served recipe's same fold
    (``real_variants.json``) and the recipes served before it: clips, then the float32 streams,
    validation (where the operating point is chosen) and test."""
    recipe = {f["fold"]: f for f in result("real_variants")["candidates"]["recipe"]["per_fold"]}
    screened = []
    for path in sorted(RESULTS.glob("real_screen*.json")):
        for name, e in result(path.stem)["candidates"].items():
            screened += [(f"`{name}`", f, path.name) for f in e["per_fold"] if "stream" in f and f["fold"] in recipe]
    folds = sorted({f["fold"] for _, f, _ in screened})
    served = [("served recipe", recipe[k], "real_variants.json") for k in folds]
    for name, file in (("tc_resnet", "real_variants_tc_resnet"), ("ds_cnn128", "real_variants_ds_cnn128")):
        before = {f["fold"]: f for f in result(file)["candidates"][name]["per_fold"]}
        served += [(f"`{name}` (served before)", before[k], f"{file}.json") for k in folds if k in before]
    rows = []
    for who, g, file in served + screened:
        st = g["stream"]["tflite"]
        rows.append([who, g["fold"], pct(g["ours"]["accuracy"]), weakest(g["ours"]["per_class"]),
                     pct(g["ours"]["per_class"]["_unknown_"]["recall"]), _at(st["validation"]), _at(st), f"`{file}`"])
    return md(["candidate", "fold", "clips %", "weakest class", "`_unknown_`",
               "validation streams: recall % @ FA/h", "test streams: recall % @ FA/h", "file"], rows)


def table_det_compare() -> str:
    """``bench_det_compare.py``: models at equal false accepts on one fold's test streams (best over
    the sweep chosen ON TEST, a comparison only) beside the operating point chosen on validation."""
    r = result("real_det_compare")
    budgets = r["budgets_fa_per_hour"]
    rows = [[name, *(pct(v["best_on_test"][str(b)]["recall"]) for b in budgets),
             f"{pct(v['chosen_on_validation']['test_recall'])} @ {v['chosen_on_validation']['test_false_accepts_per_hour']:.0f}"]
            for name, v in r["results"].items()]
    t = r["streams"]["test"]
    return (md(["model / runtime", *(f"best on test @ ≤ {b} FA/h" for b in budgets), "chosen on validation: test % @ FA/h"], rows)
            + f"\n\nFold {r['fold']}: {t['minutes']:g} min of test streams, {t['words']} words from {t['clips']} clips "
            f"(one false accept = {60 / t['minutes']:g} per hour); {when(r['machine'])}.")


def table_stream_loss() -> str:
    """``bench_stream_loss.py``: the same keywords clean, aligned in the stream's noise, and as the
    detector sees them; per background recording."""
    rows = []
    for path in sorted(RESULTS.glob("stream_loss*.json")):
        r = result(path.stem)
        groups = {"all": r["summary"]["keywords"], **r["summary"]["by_noise"]}
        other = r["summary"]["other_words"]
        for name, g in groups.items():
            rows.append([r["model"] if name == "all" else "", name.removesuffix(".wav"), g["n"], pct(g["clean"]),
                         pct(g["aligned_in_noise"]), pct(g["stream_peak_at_0.7"]),
                         pct(other["keyword_at_0.7"]) if name == "all" else ""])
    return md(["model", "background", "keywords said", "clean clip %", "same clip in the stream's noise %",
               "stream: peak ≥ 0.7 %", "other words: a keyword ≥ 0.7 %"], rows)


def table_posthoc() -> str:
    rows = []
    for path in sorted(RESULTS.glob("real_posthoc*.json")):
        for rule, s in result(path.stem)["rules"].items():
            rows.append([f"`{path.name}`", rule, ci(s), pct(s["min_recall"]), pct(s["recall"]["_unknown_"]),
                         pct(s["recall"]["go"])])
    return md(["file", "rule", "accuracy % [95 % CI]", "weakest class", "`_unknown_`", "`go`"], rows)


# --------------------------------------------------------------------------- speed
def table_prepare() -> str:
    r = result("prepare")
    res, art = r["results"], r["artifacts"]
    rows = [["original (librosa 22.05 kHz per file → JSON)", res["original"]["seconds_median"],
             res["original"]["clips_per_s"], f"{art['original_json_bytes'] / 1e6:.2f} MB JSON"],
            [f"kws prepare ({res['ours']['workers']} workers → NPZ)", res["ours"]["seconds_median"],
             res["ours"]["clips_per_s"], f"{art['ours_npz_bytes'] / 1e6:.2f} MB NPZ"],
            ["kws prepare, 1 worker", res["ours_1_worker"]["seconds_median"], res["ours_1_worker"]["clips_per_s"], "–"],
            ["**ratio**", f"**{r['speedup']}× faster**", f"(1 worker: {r['speedup_1_worker']}×)",
             f"**{r['size_reduction']}× smaller**"]]
    return md([f"{r['dataset']['word_clips']} synthetic clips", "s (median)", "clips/s", "artifact"], rows)


def table_train() -> str:
    rows = [[f"`{name}`", f"{m['params_count']:,}", f"{m['seconds_per_epoch']:.2f}", m["best_epoch"],
             f"{m['test_accuracy_synthetic']:.3f}", f"{m['test_macro_f1_synthetic']:.3f}", m["tflite_agreement"],
             f"{100 * m['real_digits_unknown_share']:.0f} %"] for name, m in result("train")["results"].items()]
    return md(["model", "params", "s/epoch", "best epoch", "synthetic test acc", "macro F1", "TFLite agreement",
               "real digits → `_unknown_`"], rows)


def table_main_job() -> str:
    """The README's offline main job on a fresh clone, stage by stage (``bench_main_job.py``)."""
    r = result("main_job")
    rows = [[f"`{k}`", f"{v:.0f}"] for k, v in r["stage_seconds"].items()]
    rows.append(["**total**", f"**{r['total_seconds']:.0f}** ({r['total_seconds'] / 60:.1f} min; budget "
                 f"{r['budget_seconds'] / 60:.0f} min)"])
    rows.append(["second `dvc repro`", f"{r['second_repro_seconds']:.0f} ({'nothing to do' if r['second_repro_noop'] else 'RAN STAGES'})"])
    return md(["step", "seconds"], rows) + f"\n\nAt {r['commit'][:7]}, {when(r['machine'])}."


def table_parallel() -> str:
    """Training throughput by models at once and threads each (``bench_parallel.py``)."""
    r = result("parallel")
    rows = [[x["processes"], x["threads"] or "TensorFlow's default (every core)", f"{x['ms_per_example']:.3f}",
             f"{x['speedup']:.2f}×"] for x in r["rows"]]
    return md(["models at once", "threads each", "ms per example, all models together", "speed-up"], rows) + \
        f"\n\n{when(r['machine'])}."


def table_train_memory() -> str:
    """The train stage's memory on full-size features (``bench_train_memory.py``)."""
    r = result("train_memory")
    rows = [[name, f"{v['peak_rss_mb'] / 1000:.2f}", f"{v['peak_pss_mb'] / 1000:.2f}", f"{v['peak_main_rss_mb'] / 1000:.2f}"]
            for name, v in r["results"].items()]
    n = r["examples"]
    return md(["three models", "peak RSS GB (stage + workers)", "peak PSS GB", "the stage's process alone GB"], rows) + \
        f"\n\n{n['train']:,} training + {n['validation']:,} validation examples; {when(r['machine'])}."


def table_serving_inprocess() -> str:
    res = result("serving")["inprocess"]["results"]
    rows = [[f"`{name}`", ms(m["p50_ms"]), ms(m["p90_ms"]), ms(m["p99_ms"]), ms(m["mean_ms"]),
             f"{m['speedup_p50_vs_legacy']}×" if "speedup_p50_vs_legacy" in m else "1×"] for name, m in res.items()]
    return md(["in-process, per 1 s clip (ms)", "p50", "p90", "p99", "mean", "speed-up p50"], rows)


def table_serving_http() -> str:
    h = result("serving")["http"]
    rows = [[f"`{name}`", f"{m['requests']:,}", f"{m['requests_per_s']:.1f}", f"{m['latency_ms']['p50']:.1f}",
             f"{m['latency_ms']['p90']:.1f}", f"{m['latency_ms']['p99']:.1f}", m["non_2xx_3xx"], sum(m["socket_errors"].values())]
            for name, m in h["results"].items()]
    return md([f"nginx → Waitress ({h['waitress_threads']} threads), wrk {h['duration_s']} s, "
               f"{h['connections']} connections", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "non-2xx",
               "socket errors"], rows)


def table_scale() -> str:
    st = result("scale")["stages"]
    rate = {"download": lambda s: f"{s['transfer_mb_s']} MB/s transfer, {s['clips']:,} clips",
            "prepare": lambda s: f"{s['extractions_per_s']} featurized examples/s ({s['examples']:,})",
            "train": lambda s: f"{s['s_per_step']} s/step ({s['examples_per_s']} examples/s)",
            "evaluate": lambda s: f"{s['clips_per_s']} clips/s ({s['n_test']:,} test + {s['n_canonical']:,} canonical)",
            "stream": lambda s: f"{s['audio_s_per_s']} s of audio/s ({s['audio_minutes']} min of streams)"}
    rows = [[name, f"{s['wall_s']} s", f"{s['peak_rss_mb'] / 1000:.2f} GB", f"{s['disk']['mb']:,.1f} MB",
             rate[name](s) if name in rate else "–"] for name, s in st.items()]
    t = st["train"]
    # runs before 2026-12-06 extrapolated one model, whatever the ensemble
    members = f" × {t['members']} models" if "members" in t else " (one model)"
    return md(["stage", "wall", "peak RSS", "disk", "throughput"], rows) + (
        f"\n\nA full training run, extrapolated: {t['s_per_step']} s/step × {t['full_epoch_steps']:,} steps per epoch "
        f"× {t['conf_epochs']} epochs{members} ≈ {t['extrapolated_full_training_s'] / 60:.0f} min "
        "(conf/'s defaults at the time of the run).")


def table_scale_targets() -> str:
    return md(["target", "measured", "pass"],
              [[t["target"], t["measured"], "yes" if t["pass"] else "**no**"] for t in result("scale")["targets"]])


def when(machine: dict) -> str:
    """The run's date and the machine's load, as the result file recorded them."""
    load = " / ".join(str(x) for x in machine["loadavg_1_5_15min"])
    return (f"{machine['date'][:16].replace('T', ' ')} UTC, {machine['cpu_count']} cores ({machine['cpu_model']}), "
            f"load average {load} (1 / 5 / 15 min)")


def target(section: dict, file: str) -> str:
    """A section's own ``target`` field, or the plain statement that the file records none."""
    return section["target"] if section.get("target") else f"not recorded in `{file}`"
