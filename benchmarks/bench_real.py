"""Real speech, speakers held out: every model and the chosen recipe by speaker folds, side by
side with the ORIGINAL project's model on the same clips.

The pool is ``../shared/data/speech_commands_real`` (+ its real silence clips and the
dataset's background noise): ``data=speech_commands_real``. Its 172 speakers are dealt into
5 seeded folds (``data.split``); for every fold, every candidate runs the pipeline's own
``prepare`` and ``train`` (test fold = that fold, validation = 10 % of the other speakers),
then the test fold's clips are scored FILE BY FILE through the service's decoder and TFLite
predictor (:mod:`kws.scoring.classifier`). The original model (``../shared/baselines/original_cnn``,
30 words, no ``_silence_`` class) is scored on exactly the same files. Pooled over the folds
every clip of the pool is a test clip exactly once.

    .venv/bin/python benchmarks/bench_real.py                      # all candidates, 5 folds
    .venv/bin/python benchmarks/bench_real.py --candidates recipe --folds 0 1 2
    .venv/bin/python benchmarks/bench_real.py --candidates recipe --variants --out real_variants.json
    .venv/bin/python benchmarks/bench_real.py --candidates --extra "one=train.ensemble_seeds=[]" \
        "seeds3=train.ensemble_seeds=[7,1234]" --variants --out real_screen_seeds.json

``--variants`` adds, per fold, the same clips scored alone and with ±40 ms views, by the float32
and the int8 model, and the stream stage's own benchmark of the
fold's model (operating point chosen on the fold's validation streams, float32 and int8), with
its test DET curve; pooled over the folds, those curves are one (``real_pooling.pooled_det``).
A screen's five folds of curves and variants pass the size a result file may have in git:
``--compact RUN --out real_screen_x.json`` keeps the pooled ones only (run the screen with
``--out`` outside the repo first, so a rerun can still reuse its folds).

A candidate is a list of Hydra overrides on top of ``data=speech_commands_real`` and conf/'s
defaults (which ARE the served recipe). A seed ensemble (``train.ensemble_seeds``) is trained
member by member, each member cached as the single-model candidate it is, and averaged as the
train stage exports it. Results: ``benchmarks/results/real.json`` (or ``--out``): summaries per
fold, pooled and per class; the per-clip rows ``[file, true, predicted]`` go to the git-ignored sidecar ``benchmarks/results/clips/<name>.json`` (rerun to regenerate them:
cached fold models make that scoring only). Figures are "real speech, speakers held out" — not
Speech Commands accuracy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, machine_info, write_result  # noqa: E402
from real_folds import compose_fold, ensemble_fold, member_overrides, trained  # noqa: E402
from real_original import ORIGINAL, OriginalModel, original_streams  # noqa: E402
from real_pooling import STREAM_KEYS, compact, det_rows, pooled, pooled_stream, report, slim, write_clips  # noqa: E402

from kws.views import VIEW_SHIFTS_MS  # noqa: E402

#: the candidates measured before ``train.logit_offsets`` existed answer by plain argmax
ARGMAX = "train.logit_offsets=null"
#: name -> Hydra overrides. ``recipe`` = conf/'s defaults: the served recipe.
CANDIDATES: dict[str, list[str]] = {
    "recipe": [],
    # until 2026-12-03: the same recipe on the DS-CNN (128 filters)
    "ds_cnn128": ["model=ds_cnn"],
    # 2026-12-01: the synthetic extra source at half a real clip's weight, no logit offset
    "recipe_synth_w05": ["model=ds_cnn", "data.extra.0.weight=0.5", ARGMAX],
    # earlier served recipes: the real pool alone (no synthetic extra source)
    "recipe_filters64": ["model=ds_cnn", "model.filters=64", "data.extra=[]", ARGMAX],  # until 2026-12-01 (DS-CNN's "small" width)
    "recipe_filters96": ["model=ds_cnn", "model.filters=96", "data.extra=[]", ARGMAX],  # 2026-12-01, before the synthetic extra source
    # the three architectures as they were before the real-speech work (MFCC, 1 copy, plateau LR)
    "cnn_seed": ["model=cnn_seed", "features=mfcc", "prepare.augment.copies=1", "prepare.augment.speed=[1.0,1.0]",
                 "train.lr_schedule=plateau", "train.label_smoothing=0.0", "train.epochs=30", "data.extra=[]", ARGMAX],
    "ds_cnn": ["model=ds_cnn", "model.filters=64", "features=mfcc", "prepare.augment.copies=1", "prepare.augment.speed=[1.0,1.0]",
               "train.lr_schedule=plateau", "train.label_smoothing=0.0", "train.epochs=30", "data.extra=[]", ARGMAX],
    "bc_resnet": ["model=bc_resnet", "features=mfcc", "prepare.augment.copies=1", "prepare.augment.speed=[1.0,1.0]",
                  "train.lr_schedule=plateau", "train.label_smoothing=0.0", "train.epochs=30", "data.extra=[]", ARGMAX],
    # the architectures on the (64-filter era) recipe's data and training settings
    "recipe_cnn_seed": ["model=cnn_seed", "data.extra=[]", ARGMAX],
    "recipe_bc_resnet": ["model=bc_resnet", "data.extra=[]", ARGMAX],
}
DEFAULT_RUN = ["recipe", "cnn_seed", "ds_cnn", "bc_resnet"]

log = logging.getLogger("bench_real")


def run_fold(cfg, original: OriginalModel | None, variants: bool = False, members: list | None = None) -> dict:
    """One fold of one candidate: trained (``members``: a seed ensemble's, :func:`ensemble_fold`),
    its test clips scored, with ``variants`` its runtimes, rules and streams; the original model
    on the same clips (and streams)."""
    from kws.scoring.classifier import bundle_classifier, score

    if members:
        prepare_s, summary = ensemble_fold(cfg, members)
    else:
        prepare_s, summary = trained(cfg)
    features = Path(cfg.paths.features)
    with np.load(features / "test.npz") as d:
        files, y = list(d["files"]), d["y"]
    labels = json.loads((features / "meta.json").read_text())["labels"]
    root = Path(cfg.paths.dataset)
    items = [(root / f, labels[int(k)]) for f, k in zip(files, y)]
    ours, rows = slim(score(items, bundle_classifier(cfg.paths.model), labels, progress=False))
    out = {"prepare_s": round(prepare_s, 1), "train": summary, "ours": ours, "clips": {"ours": rows}}
    if variants:
        out["variants"], out["stream"] = score_variants(Path(cfg.paths.model), items, labels), stream_variants(cfg)
        if original is not None:
            out["stream"]["original"] = original_streams(cfg, original, labels)
    if original is not None:
        original.precompute([p for p, _ in items])
        out["original"], out["clips"]["original"] = slim(score(items, original, labels, progress=False))
    return out


#: name -> (runtime, test-time shifts; None: the service's rule). Scored with ``--variants``: the
#: clip alone (the served rule) and with its ±40 ms views, float32 and int8, on the same clips.
VARIANTS: dict[str, tuple[str, tuple[float, ...] | None]] = {
    "float32, ±40 ms views": ("tflite", VIEW_SHIFTS_MS), "float32, clip alone": ("tflite", (0.0,)),
    "int8, ±40 ms views": ("tflite_int8", VIEW_SHIFTS_MS), "int8, clip alone": ("tflite_int8", (0.0,)),
}
def score_variants(model_dir: Path, items: list, labels: list) -> dict:
    from kws.scoring.classifier import BundleClassifier, score

    out = {}
    for name, (runtime, shifts) in VARIANTS.items():
        clf = BundleClassifier(model_dir, runtime=runtime, tta_shifts_ms=shifts)
        out[name], _ = slim(score(items, clf, labels, progress=False))
    return out


def stream_variants(cfg) -> dict:
    """The stream stage's own benchmark of this fold's model, per runtime: the operating point
    chosen on the fold's validation streams, the figures on its test streams."""
    from omegaconf import OmegaConf

    from kws.stages.stream import measure

    out = {}
    for runtime in ("tflite", "tflite_int8"):
        sc = OmegaConf.create(OmegaConf.to_container(cfg.stream, resolve=True) | {"runtime": runtime})
        metrics, point, curves = measure(sc, Path(cfg.paths.features), Path(cfg.paths.model))
        out[runtime] = {"settings": point["settings"], "validation": point["operating_point"]["validation"],
                        **{k: metrics["test"][k] for k in STREAM_KEYS},
                        "det": det_rows(curves["test"])}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="*", default=DEFAULT_RUN, help=f"of {sorted(CANDIDATES)}")
    parser.add_argument("--extra", nargs="*", default=[], metavar="NAME=OVERRIDES",
                        help="ad-hoc candidates: 'name=model=ds_cnn;train.mixup_alpha=0.2'")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("KWS_BENCH_CACHE", "/tmp/kws-bench")) / "real")
    parser.add_argument("--out", default="real.json")
    parser.add_argument("--no-original", action="store_true")
    parser.add_argument("--variants", action="store_true",
                        help="also: int8 and clip-alone scoring of the same clips, and the stream benchmark per fold")
    parser.add_argument("--report", action="store_true", help="only print the tables of --out")
    parser.add_argument("--compact", type=Path, metavar="RUN",
                        help="only write RUN (a whole run's file) to --out without the per-fold curves and variants")
    args = parser.parse_args(argv)
    out_path = (Path(args.out).resolve() if Path(args.out).parent != Path(".")  # before the chdir below
                else REPO / "benchmarks" / "results" / args.out)
    if args.compact:
        write_result(out_path, compact(json.loads(args.compact.read_text())))
        return 0
    if args.report:
        report(json.loads(out_path.read_text()))
        return 0

    from kws.logs import setup_logging
    from kws.stages.download import download

    setup_logging()
    candidates = {c: CANDIDATES[c] for c in args.candidates}
    for spec in args.extra:
        name, _, overrides = spec.partition("=")
        candidates[name] = [o for o in overrides.split(";") if o]
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)  # MLflow's embedded store (mlflow.db, mlruns/) goes here, not into the repo

    # the pool, materialized once by the download stage's own code (relative paths resolve from the repo)
    from omegaconf import OmegaConf

    from kws.config import compose, write_params

    params = args.work / "params.yaml"
    cfg0 = compose(["data=speech_commands_real"], conf_dir=REPO / "conf")
    cfg0.data.source = str((REPO / cfg0.data.source).resolve())
    cfg0.data.noise_dir = str((REPO / cfg0.data.noise_dir).resolve())
    cfg0.data.silence_dir = str((REPO / cfg0.data.silence_dir).resolve())
    cfg0.paths.dataset = str(args.work / "raw" / "speech_commands")
    cfg0.paths.extra = str(args.work / "raw" / "extra")
    extras = {}  # the candidates' training-only extra sources, materialized once beside the pool
    for overrides in candidates.values():
        for entry in OmegaConf.to_container(compose(["data=speech_commands_real", *overrides],
                                                    conf_dir=REPO / "conf").data.extra, resolve=True) or []:
            synthetic = entry.get("synthetic") or {}
            if synthetic.get("noise_dir") and not Path(synthetic["noise_dir"]).is_absolute():  # conf/: repo-relative
                synthetic["noise_dir"] = str((REPO / synthetic["noise_dir"]).resolve())
            extras[entry["name"]] = entry
    cfg0.data.extra = list(extras.values())
    write_params(cfg0, params)
    download(params, progress=False)

    original = None if args.no_original or not (ORIGINAL / "model.h5").is_file() else OriginalModel()
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}
    results.setdefault("candidates", {})
    started = time.perf_counter()
    for name, overrides in candidates.items():
        previous = {f["fold"]: f for f in results["candidates"].get(name, {}).get("per_fold", [])
                    if f.get("overrides") == overrides}
        folds = []
        for fold in args.folds:
            cfg = compose_fold(overrides, fold, args.work, name)
            members = [compose_fold([*overrides, *m], fold, args.work, name) for m in member_overrides(cfg)]
            log.info("=== %s, test fold %d: %s", name, fold, " ".join(overrides) or "(conf defaults)")
            t0 = time.perf_counter()
            r = run_fold(cfg, original, args.variants, members)
            r["fold"], r["seconds"], r["overrides"] = fold, round(time.perf_counter() - t0, 1), overrides
            previous[fold] = r
            folds.append(r)
            log.info("%s fold %d: ours %.4f, original %s (%.0f s)", name, fold, r["ours"]["accuracy"],
                     f"{r['original']['accuracy']:.4f}" if "original" in r else "-", r["seconds"])

        folds = [previous[k] for k in sorted(previous)]  # the folds run before, with the same overrides, too
        with_original = original is not None and all("original" in f for f in folds)
        entry = {
            "overrides": overrides, "folds": [f["fold"] for f in folds],
            "config": {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("features", "model", "train")}
            | {"augment": OmegaConf.to_container(cfg.prepare.augment, resolve=True),
               "unknown_percentage": cfg.prepare.unknown_percentage, "silence_percentage": cfg.prepare.silence_percentage},
            "ours": pooled(folds, "ours"),
            "original": pooled(folds, "original") if with_original else None,
            "train_seconds_per_fold": float(np.mean([f["train"]["train_seconds"] for f in folds])),
            "params_count": folds[0]["train"]["params_count"],
            "per_fold": folds,
        }
        if all("variants" in f for f in folds):
            entry["variants"] = {v: pooled([{"v": f["variants"][v]} for f in folds], "v") for v in VARIANTS}
            entry["stream"] = {rt: pooled_stream(folds, rt) for rt in folds[0]["stream"]}
        results["candidates"][name] = entry
        results["machine"] = machine_info()
        results["pool"] = "../shared/data/speech_commands_real (+ speech_commands_real_silence), speakers held out"
        write_clips(out_path, name, folds)  # pops the per-clip rows: they stay out of the result file
        write_result(out_path, results)

    report(results)
    print(f"wrote {out_path} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
