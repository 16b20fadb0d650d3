"""Every table of figures in README.md and docs/*.md, generated from ``benchmarks/results/*.json``.

A doc asks for a table with a pair of markers; what lies between them is this script's to write:

    <!-- table:real -->
    (generated)
    <!-- /table -->

    .venv/bin/python benchmarks/report.py            # rewrite the tables in place
    .venv/bin/python benchmarks/report.py --check    # exit 1 naming each stale table; writes nothing

The tables are plain functions of the result files (``TABLES``), so a figure in a doc is always
the one a benchmark wrote; ``tests/test_docs.py`` runs the same check.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
MARKER = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)


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
               "original model, same clips", "params", "p50 ms/clip"], _candidate_rows(result("real")["candidates"]))


def table_screens() -> str:
    """Every screening run: one row per candidate of every ``real_screen*.json``."""
    rows = []
    for path in sorted(RESULTS.glob("real_screen*.json")):
        rows += _candidate_rows(result(path.stem)["candidates"], path.name)
    return md(["candidate", "folds", "clips", "accuracy % [95 % CI]", "weakest class", "`_unknown_`",
               "original model, same clips", "file"], rows)


def table_screen_overrides() -> str:
    rows = []
    for path in sorted(RESULTS.glob("real_screen*.json")):
        for name, e in result(path.stem)["candidates"].items():
            rows.append([f"`{name}`", " ".join(f"`{o}`" for o in e["overrides"]) or "(conf/ defaults then)"])
    return md(["candidate", "overrides on `data=speech_commands_real`"], rows)


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
            "evaluate": lambda s: f"{s['clips_per_s']} clips/s ({s['n_test']:,} test + {s['n_canonical']:,} canonical)"}
    rows = [[name, f"{s['wall_s']} s", f"{s['peak_rss_mb'] / 1000:.2f} GB", f"{s['disk']['mb']:,.1f} MB",
             rate[name](s) if name in rate else "–"] for name, s in st.items()]
    t = st["train"]
    return md(["stage", "wall", "peak RSS", "disk", "throughput"], rows) + (
        f"\n\nA full training run, extrapolated: {t['s_per_step']} s/step × {t['full_epoch_steps']:,} steps per epoch "
        f"× {t['conf_epochs']} epochs ≈ {t['extrapolated_full_training_s'] / 60:.0f} min "
        "(conf/'s defaults at the time of the run).")


def table_scale_targets() -> str:
    return md(["target", "measured", "pass"],
              [[t["target"], t["measured"], "yes" if t["pass"] else "**no**"] for t in result("scale")["targets"]])


# --------------------------------------------------------------------------- issue 21: one pass, int8, batches
def when(machine: dict) -> str:
    """The run's date and the machine's load, as the result file recorded them."""
    load = " / ".join(str(x) for x in machine["loadavg_1_5_15min"])
    return (f"{machine['date'][:16].replace('T', ' ')} UTC, {machine['cpu_count']} cores ({machine['cpu_model']}), "
            f"load average {load} (1 / 5 / 15 min)")


def target(section: dict, file: str) -> str:
    """A section's own ``target`` field, or the plain statement that the file records none."""
    return section["target"] if section.get("target") else f"not recorded in `{file}`"


RULES = {"three_pass_50ms": "before: clip + ±50 ms shifts, 3 feature passes + 3 runtime calls",
         "one_pass_40ms": "now: clip + ±40 ms shifts, 1 feature pass + 1 runtime call",
         "one_pass_60ms": "one pass, ±60 ms shifts", "clip_alone": "the clip alone (no shifts)"}


def _variant(key: str) -> tuple[str, str]:
    rule, _, runtime = key.rpartition("_")
    return RULES.get(rule, f"`{rule}`"), runtime


def table_speed_latency() -> str:
    r = result("speed")
    lat = r["latency"]
    res = lat["results"]
    base = res.get("three_pass_50ms_float32")
    rows = []
    for key, m in res.items():
        rule, runtime = _variant(key)
        gain = (f"{base['p50_ms'] / m['p50_ms']:.1f}× / {base['cpu_p50_ms'] / m['cpu_p50_ms']:.1f}×"
                if base else "– (no three-pass run)")
        rows.append([rule, runtime, ms(m["p50_ms"]), ms(m["p90_ms"]), ms(m["min_ms"]), ms(m["cpu_p50_ms"]),
                     ms(m["cpu_p90_ms"]), gain])
    return md(["per 1 s clip, file bytes → answer", "runtime", "wall p50 ms", "wall p90", "wall min", "CPU p50 ms",
               "CPU p90", "p50 vs before (wall / CPU)"], rows) + (
        f"\n\n{lat['requests']} requests over {lat['distinct_clips']} real clips, the variants taking turns; "
        f"1-min load average {lat['loadavg_1min']} during this section; {when(r['machine'])}. "
        f"Target: {target(lat, 'speed.json')}.")


def table_speed_accuracy() -> str:
    acc = result("speed")["accuracy"]
    rendered = acc["rendered_test_split"]
    found = list(dict.fromkeys(k.rpartition("_")[0] for k in rendered))
    rows = []
    for rule in [k for k in RULES if k in found] + [k for k in found if k not in RULES]:
        f32, i8 = rendered.get(f"{rule}_float32"), rendered.get(f"{rule}_int8")
        diff = f"{100 * (i8['accuracy'] - f32['accuracy']):+.2f}" if f32 and i8 else "–"
        rows.append([RULES.get(rule, f"`{rule}`")]
                    + [f"{pct(c['accuracy'])} ({c['correct']}/{c['n']})" if c else "–" for c in (f32, i8)] + [diff])
    npz = acc["test_npz_clip_alone"]
    rows.append(["`test.npz` features (prepare's, no decoding), the clip alone", pct(npz["float32"]), pct(npz["int8"]),
                 f"{-acc['test_npz_loss_points']:+.2f}"])
    return md([f"held-out test split ({acc['n_test']} examples rendered from the clips again)", "float32 %", "int8 %",
               "int8 − float32 (points)"], rows)


def export_check(r: dict) -> dict | None:
    """The bundle's int8 export check (``model_info.json``'s ``int8``) as ``bench_speed.py`` recorded it:
    a field of its own, or the dict inside the ``int8_model`` sentence."""
    if isinstance(r.get("int8_check"), dict):
        return r["int8_check"]
    m = re.search(r"export check: (\{.*\})", r.get("int8_model", ""))
    try:
        return ast.literal_eval(m.group(1)) if m else None
    except (ValueError, SyntaxError):
        return None


def table_speed_int8() -> str:
    r = result("speed")
    size, check, acc = r["sizes"], export_check(r), r["accuracy"]
    rows = [["TFLite file", f"{size['float32_bytes']:,} B", f"{size['int8_bytes']:,} B",
             f"{size['ratio']}× smaller", target(size, "speed.json"), "–"]]
    if check:
        limit = check["max_loss_points"]
        rows.append([f"export check, {check['check_split']} split ({check['check_examples']} examples)",
                     f"{pct(check['float32_accuracy'])} %", f"{pct(check['int8_accuracy'])} %", f"{-check['loss_points']:+.2f} points",
                     f"loss ≤ {limit} points", "yes: `auto` serves int8" if check["default"] else "**no**: `auto` serves float32"])
        loss = acc["test_npz_loss_points"]
        rows.append(["test split (`test.npz`), the clip alone", f"{pct(acc['test_npz_clip_alone']['float32'])} %",
                     f"{pct(acc['test_npz_clip_alone']['int8'])} %", f"{-loss:+.2f} points", f"loss ≤ {limit} points",
                     "yes" if loss <= limit else "**no**"])
    else:
        rows.append(["export check", "–", "–", "–", "not recorded in `speed.json`", "–"])
    return md(["int8 model against float32", "float32", "int8", "int8 vs float32", "target", "meets"], rows) + (
        f"\n\nModel: `{r['architecture']}`; int8 model {r['int8_model'].split(';')[0]}; {when(r['machine'])}.")


def table_speed_score() -> str:
    r = result("speed")
    k = r["kws_score"]
    one, many = k["clip_by_clip"], k["batched"]
    rows = [["before: clip by clip, in one process", 1, 1, f"{one['clips_per_s']:.1f}", "1×", pct(one["accuracy"])],
            [f"now: `kws-score --workers {many['workers']} --batch {many['batch']}`", many["workers"], many["batch"],
             f"{many['clips_per_s']:.1f}", f"{many['clips_per_s'] / one['clips_per_s']:.2f}×", pct(many["accuracy"])]]
    same = "yes" if k["identical_predictions"] else "**no**"
    return md([f"kws-score, {k['clips']:,} clips (`{k['layout']}` layout)", "workers", "batch", "clips/s",
               "vs clip by clip", "accuracy %"], rows) + (
        f"\n\nIdentical predictions: {same}. Throughput includes loading the predictors and starting the workers. "
        f"{when(r['machine'])}; target: {target(k, 'speed.json')}.")


# --------------------------------------------------------------------------- issue 22: overload, hostile uploads
def _bound(run: dict) -> str:
    nginx = run.get("nginx_max_predicts")
    return (f"`KWS_MAX_QUEUE={run['max_queue']}`, " +
            (f"nginx `KWS_MAX_PREDICTS={nginx}`" if nginx else "no nginx bound"))


def _lat(s: dict | None, keys: tuple[str, ...] = ("p50_ms", "p99_ms", "max_ms")) -> str:
    return "–" if not s else f"{' / '.join(f'{s[k]:.0f}' for k in keys)} (n={s['n']})"


def table_overload() -> str:
    r = result("overload")
    rows = []
    for run in r["runs"]:
        w = run["wrk"]
        status = dict(w["status"])
        ok, busy = status.pop("200", 0), status.pop("503", 0)
        other = ", ".join(f"{c}: {n}" for c, n in status.items()) or "0"
        errors = ", ".join(f"{k} {v}" for k, v in w["socket_errors"].items() if v) or "0"
        lat = w["latency_ms"]
        rows.append([_bound(run), run["threads"], run["loadavg_1min_before"], f"{w['requests']:,}",
                     f"{w['requests_per_s']:.1f}", f"{ok:,}", f"{busy:,}", other, errors,
                     f"{lat['p50']:.0f} / {lat['p99']:.0f} / {lat['max']:.0f}"])
    return md([f"wrk, {r['connections']} connections, {r['duration_s']} s", "threads", "1-min load before",
               "requests", "req/s", "200", "503", "other status", "socket errors", "latency p50 / p99 / max ms"],
              rows) + (f"\n\nnginx → Waitress on loopback; {r['note']}. {when(r['machine'])}. "
                       f"Target: {target(r, 'overload.json')}.")


def table_overload_probe() -> str:
    r = result("overload")
    rows = []
    for run in r["runs"]:
        pred, health = run["probe_predict_by_status"], run["probe_health_by_status"]
        other = {c: s for c, s in pred.items() if c not in ("200", "503")}
        rows.append([_bound(run), _lat(run["idle_predict"]), _lat(pred.get("200")), _lat(pred.get("503")),
                     ", ".join(f"{c}: {s['n']}" for c, s in other.items()) or "0",
                     _lat(health.get("200")), sum(s["n"] for c, s in health.items() if c != "200"),
                     run["queue_warning_lines"]])
    return md(["one probe at a time (ms: p50 / p99 / max)", "`/predict` idle, before the load",
               "`/predict` under load: 200", "`/predict` under load: 503", "other status",
               "`/health` under load: 200", "`/health` not 200", "queue warning lines"], rows)


PHASES = {"idle": "idle: nothing else running", "gzip_zeros": "flood: gzip-compressed zeros",
          "ffmpeg_spinner": "flood: valid Matroska that ffmpeg spins on",
          "burst_gzip_zeros": "burst: gzip zeros sent at once, then the clip",
          "burst_ffmpeg_spinner": "burst: Matroska spinners at once, then the clip"}


def _hostile_files() -> list[Path]:
    return sorted(RESULTS.glob("hostile*.json"))


def _limit(r: dict) -> float | None:
    """The ratio the file's ``target`` sentence allows (``... <= 2x idle p50``)."""
    m = re.search(r"<=\s*([\d.]+)\s*x", r.get("target", ""))
    return float(m.group(1)) if m else None


def _settings(r: dict) -> str:
    s = r["setup"].get("settings") or {}
    return " ".join(f"`{k}={v}`" for k, v in s.items()) or "defaults"


def table_hostile() -> str:
    rows, notes = [], []
    for path in _hostile_files():
        r = result(path.stem)
        limit = _limit(r)
        for phase, p in r["phases"].items():
            wav, ratio = p["wav"], p.get("wav_p50_vs_idle")
            meets = "–" if ratio is None or limit is None else ("yes" if ratio <= limit else "**no**")
            rows.append([f"`{path.name}` ({_settings(r)})", PHASES.get(phase, phase), wav["n"], f"{wav['p50_ms']:.0f}",
                         f"{wav['p90_ms']:.0f}", f"{wav['max_ms']:.0f}", "1× (reference)" if phase == "idle" else f"{ratio}×",
                         f"≤ {limit:g}×" if limit is not None else "not recorded", "–" if phase == "idle" else meets])
        s = r["setup"]
        notes.append(f"`{path.name}`: {s['hostile_in_flight']} hostile uploads in flight, {s['server']}; "
                     f"{s['model']}; normal clip `{s['normal_clip']}`; {when(r['machine'])}; target: {r.get('target', '–')}.")
    return md(["file (settings)", "phase", "normal WAVs", "p50 ms", "p90 ms", "max ms", "p50 vs idle", "target",
               "meets"], rows) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def table_hostile_answers() -> str:
    rows = []
    for path in _hostile_files():
        r = result(path.stem)
        for phase, p in r["phases"].items():
            if phase == "idle":
                webm = f"p50 {p['webm']['p50_ms']:.0f} ms (n={p['webm']['n']})"
                rows.append([f"`{path.name}`", PHASES["idle"], "–", "–", "–", webm, "–"])
                continue
            size = p.get("upload_bytes")
            answers = ", ".join(f"{k}: {v:,}" for k, v in p["hostile_answers"].items())
            webm = ", ".join(f"{k}: {v}" for k, v in p.get("webm_answers_under_attack", {}).items()) or "–"
            cpu = p.get("ffmpeg_cpu_s_per_hostile_upload")
            rows.append([f"`{path.name}`", PHASES.get(phase, phase), f"{size:,} B" if size else "–", answers,
                         _lat(p.get("hostile_latency"), ("p50_ms", "p90_ms", "max_ms")), webm,
                         "–" if cpu is None else f"{cpu} s"])
    return md(["file", "phase", "hostile upload", "hostile answers", "hostile latency ms p50 / p90 / max",
               "the clip as WebM (ffmpeg)", "ffmpeg CPU per hostile upload"], rows)


TABLES = {name.removeprefix("table_").replace("_", "-"): fn for name, fn in globals().items()
          if name.startswith("table_") and callable(fn)}


# --------------------------------------------------------------------------- the docs
def docs() -> list[Path]:
    return [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def rewrite(text: str) -> str:
    """``text`` with every marked table regenerated (an unknown table name is an error)."""
    def fill(m: re.Match) -> str:
        if m.group(2) not in TABLES:
            raise KeyError(f"unknown table {m.group(2)!r}: one of {', '.join(sorted(TABLES))}")
        return m.group(1) + TABLES[m.group(2)]() + "\n" + m.group(4)
    return MARKER.sub(fill, text)


def stale(paths: list[Path] | None = None) -> list[str]:
    """``path: table NAME`` for every table whose text differs from what the results give."""
    out = []
    for path in paths or docs():
        if not path.is_file():
            continue
        text = path.read_text()
        for m in MARKER.finditer(text):
            if rewrite(m.group(0)) != m.group(0):
                out.append(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: table {m.group(2)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 naming each stale table; write nothing")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for line in bad:
            print(f"stale: {line} (run `python benchmarks/report.py`)", file=sys.stderr)
        return 1 if bad else 0
    for path in docs():
        if path.is_file() and (new := rewrite(old := path.read_text())) != old:
            path.write_text(new)
            print(f"rewrote tables in {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
