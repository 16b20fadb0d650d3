"""The tables of figures of this round's serving benchmarks: ``speed.json`` (issue 21: one-pass
shifts, int8, kws-score in batches), ``score.json`` (kws-score on the real pool), ``overload.json``
and ``hostile*.json`` (issue 22). Each table states the run's date and load average, and a target
only where the result file records one; :mod:`report` writes them into the docs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from report_tables import RESULTS, md, ms, pct, result, target, when


# --------------------------------------------------------------------------- issue 21: one pass, int8, batches
RULES = {"three_pass_50ms": "first: clip + ±50 ms shifts, 3 feature passes + 3 runtime calls",
         "one_pass_40ms": "then: clip + ±40 ms shifts, 1 feature pass + 1 runtime call",
         "one_pass_60ms": "one pass, ±60 ms shifts", "clip_alone": "served: the clip alone (no shifts)"}


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



def table_score() -> str:
    """``score.json`` (``bench_score.py``): kws-score clip by clip and in batches, float32 and int8."""
    r = result("score")
    rows = []
    for runtime, sec in r["runtimes"].items():
        ref = sec["reference"]
        rows.append([f"reference: `Predictor.predict` clip by clip, in one process (loaded in {ref['load_s']} s)",
                     f"`{runtime}`", 1, 1, f"{ref['clips_per_s']:.0f}", "–", "–", f"– / {ref['cpu_ms_per_clip']:.2f}",
                     pct(ref["accuracy"]), "–"])
        for run in sec["runs"]:
            rows.append([f"`kws-score --workers {run['workers']} --batch {run['batch']}`", f"`{runtime}`",
                         run["workers"], run["batch"], f"{run['clips_per_s']:.0f}", f"{run['clips_per_s_scoring']:.0f}",
                         f"{run['startup_s']:.1f} / {run['command_s']:.1f}",
                         f"{1000 * run['command_cpu_s'] / r['clips']:.2f} / {run['cpu_ms_per_clip_scoring']:.2f}",
                         pct(run["accuracy"]),
                         "yes" if run["identical_predictions"] else "**no**"])
    t = r["target"]
    return md([f"{r['clips']:,} clips (`{r['layout']}` layout)", "runtime", "workers", "batch", "clips/s",
               "clips/s once started", "start-up / command s", "CPU ms per clip: run / once started", "accuracy %", "same predictions"],
              rows) + (
        f"\n\nclips/s: the whole run as kws-score times it (start-up included); once started: after the last "
        f"worker was ready; the command's wall time also counts Python's start. CPU ms per clip: the CPU time of "
        f"the command and its workers over the clips (what the run costs whatever the load), and without the "
        f"start-up's (the same command on 2 clips). Best of "
        f"{len(r['runtimes'][next(iter(r['runtimes']))]['runs'][0]['clips_per_s_tries'])} runs each. "
        f"int8 model: {r['int8_model'].split(';')[0]}. {when(r['machine'])}; target: {t['clips_per_s']:,} clips/s on "
        f"{t['cores']} cores ({t['what']}).") + _frontend_note(r.get("frontend"))


def _frontend_note(fe: dict | None) -> str:
    """The pinned front end against librosa's start-up, where ``score.json`` measured it."""
    if not fe:
        return ""
    pinned, lib = fe["pinned"], fe["librosa"]
    return (f"\n\nThe bundle's pinned front end (`frontend.npz`): `kws-score --workers {fe['workers']}` "
            f"(`{fe['runtime']}`) starts in {pinned['startup_s']:.2f} s and runs {pinned['clips_per_s']:.0f} clips/s "
            f"({pinned['command_s']:.1f} s the command); the same bundle without it, librosa computing the "
            f"filterbank, {lib['startup_s']:.2f} s and {lib['clips_per_s']:.0f} clips/s ({lib['command_s']:.1f} s), "
            "in turns in the same run.")

def table_request() -> str:
    """``request.json`` (``bench_request.py``): where one ``POST /predict`` goes, in the app and around it."""
    r = result("request")
    a, prof = r["app_alone"], r["profile"]
    rows = [[name, f"{100 * v['share']:.1f} %", f"{v['ms_at_unprofiled_p50']:.3f}"] for name, v in prof["parts"].items()]
    out = md([f"one `POST /predict` of a 1 s WAV, in the app (p50 {a['p50_ms']:.2f} ms)", "share (cProfile)",
              "≈ ms at the p50"], rows)
    http = r.get("http")
    if http:
        res = http["results"]
        rows = [[what, f"{v['requests_per_s']:.0f}", f"{v['latency_ms']['p50']:.1f}", f"{v['latency_ms']['p99']:.1f}",
                 v["errors_total"]] for what, v in res.items()]
        out += "\n\n" + md([f"wrk through nginx, 1 api process × Waitress {http['waitress_threads']} threads, "
                             f"{http['connections']} connections", "req/s", "p50 ms", "p99 ms", "errors"], rows)
    return out + (f"\n\n{a['requests']:,} uploads of {r['clips']} real clips, each with a fresh multipart boundary; "
                  f"the shares are cProfile's ({prof['profiled_ms_per_request']:.2f} ms per request under the "
                  f"profiler), scaled to the unprofiled p50. {when(r['machine'])}.")


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


# --------------------------------------------------------------------------- issue 19: live listening
def _ms3(s: dict) -> str:
    return f"{s['p50_ms']:.0f} / {s['p90_ms']:.0f} / {s['p99_ms']:.0f} / {s['max_ms']:.0f}"


def table_listen() -> str:
    r = result("listen")
    c, ch, words = r["config"], r["chunks"], r["words"]
    rows = [["chunk answer (sent → answer)", _ms3(r["chunk_answer"])],
            ["behind real time (answer − capture of the chunk's last sample)", _ms3(r["behind_real_time"])],
            ["detection after the window that decided it", _ms3(r["detection_latency_after_deciding_window"])],
            *([["detection after the end of the word's speech", _ms3(r["detection_latency_after_speech_end"])]]
              if "detection_latency_after_speech_end" in r else []),
            ["detection after the end of the placed 1 s utterance", _ms3(r["detection_latency_after_utterance_end"])]]
    late = r.get("detections_later_than_target")
    late_note = (f" Detections later than {late['target_ms']:g} ms after the speech's end: {late['count']} of "
                 f"{late['of']}." if late else "")
    return md([f"{c['sessions']} sessions × {c['duration_s']:g} s, {c['chunk_ms']:g} ms chunks (ms)",
               "p50 / p90 / p99 / max"], rows) + (
        f"\n\nChunks: {ch['answered_200']:,} of {ch['expected']:,} answered 200, {ch['errors']} errors. Words: "
        f"{words['hits']} of {words['placed']} placed keywords found, {words['misses']} missed, "
        f"{words['wrong_or_extra']} wrong or extra.{late_note} Waitress {c['waitress_threads']} threads; {c['clients']}; "
        f"model {c['model']}; {when(r['machine'])}.")


def table_latency() -> str:
    """bench_latency.py: the detector's part of live latency, and where in the window the model is sure."""
    r = result("latency")
    c, lat, over = r["config"], r["latency_ms"], r["over_ms"]
    d = c["detector"]
    positions = list(r["worst_clips"][0]["score_by_window_start_ms"]) if r["worst_clips"] else []
    rows = [[f"`{w['word']}` {w['clip']}", " / ".join("–" if x is None else f"{x * 1000:.0f}" for x in w["latency_s"]),
             *(f"{w['score_by_window_start_ms'][k]:.2f}" for k in positions)] for w in r["worst_clips"]]
    return (f"Detected {r['detected']['hits']} of {r['detected']['of']} (clip × offset); detector latency "
            f"p50 / p90 / p99 / max {lat['p50']:.0f} / {lat['p90']:.0f} / {lat['p99']:.0f} / {lat['max']:.0f} ms; "
            f"over 350 / 400 / 500 ms: {over['350']} / {over['400']} / {over['500']}. Runtime "
            f"`{c.get('runtime', 'tflite')}`; operating point: threshold {d['threshold']:g}, average "
            f"{d['average_window_s']:g} s; {when(r['machine'])}.\n\n") + md(
        ["latest clips", "latency ms per offset", *(f"{k} ms" for k in positions)], rows)


# --------------------------------------------------------------------------- the README's serving summary
def _http_rows(pattern: str = "serving_replicas*.json", model_and_machine: bool = False) -> list[list]:
    """One row per wrk run; ``model_and_machine`` adds the bundle's architecture and the CPU it ran
    on, for a table that mixes runs of different models and machines."""
    rows = []
    for path in sorted(RESULTS.glob(pattern)):
        r = result(path.stem)
        h = r["http"]
        ours = h["results"]["ours"]
        runtime = ours.get("sample_answer", {}).get("model", {}).get("runtime", "?")
        shifts = r["settings"].get("tta_shifts_ms", "0")
        rule = "" if shifts == "0" else f", shifts {shifts} ms"
        row = [f"HTTP through nginx, wrk {h['connections']} connections, {h.get('api_replicas', 1)} api "
               f"process(es) × Waitress {h['waitress_threads']} threads, `{runtime}`{rule}",
               f"{ours['requests_per_s']:.0f} req/s, p50 {ours['latency_ms']['p50']:.0f} ms, "
               f"{ours['errors_total']} errors", f"`{path.name}`"]
        if model_and_machine:
            arch = r.get("model", {}).get("info", {}).get("architecture", "?")
            row.insert(1, f"`{arch}`, {r['machine']['cpu_model']}, {r['machine']['date'][:10]}")
        rows.append(row)
    return rows


def table_serving_summary() -> str:
    """One row per serving benchmark: its headline figure and the file it comes from."""
    speed = result("speed")["latency"]["results"]
    rows = [[f"in-process, 1 s clip, file bytes → answer ({name})", f"p50 {speed[key]['p50_ms']:.2f} ms",
             "`speed.json`"] for key, name in (("clip_alone_float32", "served rule: the clip alone, float32"),
                                                 ("clip_alone_int8", "served rule: the clip alone, int8"))
            if key in speed]
    rows += _http_rows("serving_replicas[12].json")
    sc = result("score")
    best = {rt: max(v["runs"], key=lambda run: run["clips_per_s"]) for rt, v in sc["runtimes"].items()}
    rows.append([f"`kws-score`, {sc['clips']:,} real clips, fastest setting per runtime",
                 "; ".join(f"{rt}: {b['clips_per_s']:.0f} clips/s ({b['workers']} workers, batch {b['batch']})"
                           for rt, b in best.items()), "`score.json`"])
    over = [run for run in result("overload")["runs"] if run.get("nginx_max_predicts")]
    for run in over[:1]:
        w = run["wrk"]
        rows.append([f"overload: {result('overload')['connections']} connections, {_bound(run)}",
                     f"max {w['latency_ms']['max']:.0f} ms, socket errors {sum(w['socket_errors'].values())}",
                     "`overload.json`"])
    hostile = result("hostile")["phases"]
    if "burst_gzip_zeros" in hostile:
        worst = max((p for n, p in hostile.items() if n.startswith("burst_")), key=lambda p: p["wav_p50_vs_idle"])
        rows.append(["a WAV with 8 hostile uploads in flight", f"{worst['wav_p50_vs_idle']}× its idle p50 (worst kind)",
                     "`hostile.json`"])
    lis = result("listen")
    rows.append([f"live listening: {lis['config']['sessions']} sessions in real time",
                 f"{lis['chunks']['answered_200']:,}/{lis['chunks']['expected']:,} chunks answered; detection "
                 f"{_ms3(lis.get('detection_latency_after_speech_end') or lis['detection_latency_after_utterance_end'])}"
                 " ms (p50/p90/p99/max) after the speech's end",
                 "`listen.json`"])
    return md(["serving, 2 cores (each file states its date and load)", "figure", "from"], rows)


def table_serving_processes() -> str:
    """HTTP throughput by Waitress threads and api processes (every ``serving_*.json``)."""
    return md(["wrk through nginx, one 1 s WAV", "model, machine, date", "figure", "from"],
              _http_rows("serving_*.json", model_and_machine=True)) + (
        "\n\nOne Python process runs its Flask code on about one core (the GIL): threads change little "
        "(within the spread of repeated runs), processes use the cores: on 2 cores, 2 api processes × 4 threads "
        "(compose: `--scale api=2`).")
