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
fold's model (operating point chosen on the fold's validation streams, float32 and int8).

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
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, machine_info, paths, table, write_result  # noqa: E402

from kws.views import VIEW_SHIFTS_MS  # noqa: E402

ORIGINAL = paths.BASELINES / "original_cnn"
ORIGINAL_WORDS = ("bed bird cat dog down eight five four go happy house left marvin nine no off on one "
                  "right seven sheila six stop three tree two up wow yes zero").split()

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


# --------------------------------------------------------------------------- the original model
class OriginalModel:
    """The original project's model as a ``classify(path) -> 12-class label`` (its own features:
    librosa at 22.05 kHz, first second, 13 MFCCs, n_fft 2048, hop 512; a keyword is itself,
    any other of its 30 words ``_unknown_``; it has no ``_silence_``). Predictions are batched
    per fold and looked up."""

    def __init__(self, path: Path = ORIGINAL / "model.h5"):
        import keras

        self.model = keras.models.load_model(str(path), compile=False)
        self.cache: dict[str, str] = {}

    def precompute(self, paths: list[Path]) -> None:
        from legacy_serving import legacy_mfcc

        from kws.labels import KEYWORDS, UNKNOWN

        todo = [p for p in paths if str(p) not in self.cache]
        if not todo:
            return
        x = np.stack([legacy_mfcc(p) for p in todo])[..., None].astype(np.float32)
        words = np.asarray(ORIGINAL_WORDS)[self.model.predict(x, batch_size=256, verbose=0).argmax(axis=1)]
        for p, w in zip(todo, words):
            self.cache[str(p)] = w if w in KEYWORDS else UNKNOWN

    def __call__(self, path: Path) -> str:
        return self.cache[str(path)]


# --------------------------------------------------------------------------- one fold of one candidate
def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _files_named(obj) -> dict[str, str]:
    """``{path: sha256}`` of every existing file a (nested) config value names."""
    if isinstance(obj, dict):
        return {k: v for value in obj.values() for k, v in _files_named(value).items()}
    if isinstance(obj, list):
        return {k: v for value in obj for k, v in _files_named(value).items()}
    if isinstance(obj, str) and len(obj) < 4096 and Path(obj).is_file():
        return {obj: hashlib.sha256(Path(obj).read_bytes()).hexdigest()}
    return {}


def member_overrides(cfg) -> list[list[str]]:
    """A seed ensemble's members (``train.ensemble_seeds``) as overrides of one model each: the first
    keeps ``train.seed``, each other gets its seed. [] for a single model."""
    from kws.training.settings import member_seeds

    seeds = member_seeds(cfg)
    if len(seeds) == 1:
        return []
    first = [] if cfg.train.get("seed") is None else [f"train.seed={seeds[0]}"]
    return [[*first, "train.ensemble_seeds=[]"], *([f"train.seed={s}", "train.ensemble_seeds=[]"] for s in seeds[1:])]


def compose_fold(overrides: list[str], fold: int, work: Path, name: str):
    from omegaconf import OmegaConf

    from kws.config import compose

    cfg = compose(["data=speech_commands_real", f"data.split.test_fold={fold}", *overrides], conf_dir=REPO / "conf")
    OmegaConf.set_struct(cfg, False)
    c = OmegaConf.to_container(cfg, resolve=True)
    files = _files_named(c["data"]["extra"])  # e.g. the negatives' word list: a new list, new examples
    contents = {"files": files} if files else {}  # none named: the keys of the folds cached before
    data_key = _digest({k: c[k] for k in ("features", "prepare", "seed")} | {k: c["data"][k] for k in ("split", "extra")}
                       | contents)
    cfg.paths.dataset = str(work / "raw" / "speech_commands")
    cfg.paths.extra = str(work / "raw" / "extra")
    # same config and files = same trained model. The seed keys at their neutral values (one model,
    # the top-level seed) train what was trained before they existed; the stream benchmark's settings
    # (how a trained model is measured) are no part of what was trained
    train = {k: v for k, v in c["train"].items()
             if not (k == "seed" and v is None) and not (k == "ensemble_seeds" and not v)}
    run_key = _digest({k: v for k, v in c.items() if k not in ("paths", "stream")} | {"train": train} | contents)
    cfg.paths.features = str(work / "features" / data_key)
    cfg.paths.model = str(work / "models" / run_key / f"fold{fold}")
    cfg.paths.reports = str(work / "reports" / run_key / f"fold{fold}")
    cfg.prepare.workers = 0
    return cfg


def trained(cfg) -> tuple[float, dict]:
    """Prepare and train this fold's configuration, or reuse what an earlier run left: the
    seconds prepare took here, and the training summary."""
    from kws.stages.prepare import prepare
    from kws.stages.train import train

    features = Path(cfg.paths.features)
    t0 = time.perf_counter()
    if not (features / "meta.json").is_file():
        prepare(cfg, Path(cfg.paths.dataset), features, extra_dir=Path(cfg.paths.extra))
    prepare_s = time.perf_counter() - t0
    done = Path(cfg.paths.model) / "bench_train.json"
    if done.is_file():  # this exact configuration was trained on this fold already (e.g. while screening)
        log.info("reusing the model trained with this configuration: %s", cfg.paths.model)
        return prepare_s, json.loads(done.read_text())
    summary = train(cfg, features, Path(cfg.paths.model), Path(cfg.paths.reports))  # clears Keras' session itself
    done.write_text(json.dumps(summary) + "\n")
    return prepare_s, summary


def ensemble_fold(cfg, members: list) -> tuple[float, dict]:
    """A seed ensemble (``train.ensemble_seeds``) from its members, each trained as a single model
    (or reused from the cache: a member is a single-model candidate of its own) on the same
    features, then averaged into ``cfg``'s bundle with :func:`kws.training.ensemble.averaged`, as
    the train stage exports it (tests/test_train_steps.py: the same as training them in one run).
    ``(prepare_s, summary)``; the int8 model is calibrated and checked like a trained one."""
    import keras

    from kws.bundle import read_meta, write_bundle
    from kws.training.data import load
    from kws.training.ensemble import averaged
    from kws.training.ensemble import summary as ensemble_summary
    from kws.training.export import task_targets
    from kws.training.settings import member_seeds

    runs = [trained(m) for m in members]
    done = Path(cfg.paths.model) / "bench_train.json"
    if done.is_file():
        log.info("reusing the ensemble of these members: %s", cfg.paths.model)
        return sum(p for p, _ in runs), json.loads(done.read_text())
    keras.backend.clear_session()
    average = averaged([keras.models.load_model(Path(m.paths.model) / "model.keras", compile=False) for m in members])
    splits = load(cfg.train, Path(cfg.paths.features))
    summary = ensemble_summary(average, [s for _, s in runs], splits) | {"member_dirs": [str(m.paths.model) for m in members]}
    meta = read_meta(members[0].paths.model)
    write_bundle(cfg.paths.model, average, splits.labels, splits.features, metrics=summary,
                 info={**meta.info, "run_id": None, "model_uri": None,
                       "training": {**meta.info.get("training", {}), "seeds": member_seeds(cfg)}},
                 representative=splits.x_train, check=(splits.x_val, task_targets(splits)))
    done.write_text(json.dumps(summary) + "\n")
    return sum(p for p, _ in runs), summary


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
    ours, rows = _slim(score(items, bundle_classifier(cfg.paths.model), labels, progress=False))
    out = {"prepare_s": round(prepare_s, 1), "train": summary, "ours": ours, "clips": {"ours": rows}}
    if variants:
        out["variants"], out["stream"] = score_variants(Path(cfg.paths.model), items, labels), stream_variants(cfg)
        if original is not None:
            out["stream"]["original"] = original_streams(cfg, original, labels)
    if original is not None:
        original.precompute([p for p, _ in items])
        out["original"], out["clips"]["original"] = _slim(score(items, original, labels, progress=False))
    return out


#: name -> (runtime, test-time shifts; None: the service's rule). Scored with ``--variants``: the
#: clip alone (the served rule) and with its ±40 ms views, float32 and int8, on the same clips.
VARIANTS: dict[str, tuple[str, tuple[float, ...] | None]] = {
    "float32, ±40 ms views": ("tflite", VIEW_SHIFTS_MS), "float32, clip alone": ("tflite", (0.0,)),
    "int8, ±40 ms views": ("tflite_int8", VIEW_SHIFTS_MS), "int8, clip alone": ("tflite_int8", (0.0,)),
}
STREAM_KEYS = ("recall", "recall_on_time", "false_accepts_per_hour", "false_accepts", "wrong_words", "hits",
               "keywords_said", "hours", "late", "latency_s")


def score_variants(model_dir: Path, items: list, labels: list) -> dict:
    from kws.scoring.classifier import BundleClassifier, score

    out = {}
    for name, (runtime, shifts) in VARIANTS.items():
        clf = BundleClassifier(model_dir, runtime=runtime, tta_shifts_ms=shifts)
        out[name], _ = _slim(score(items, clf, labels, progress=False))
    return out


def stream_variants(cfg) -> dict:
    """The stream stage's own benchmark of this fold's model, per runtime: the operating point
    chosen on the fold's validation streams, the figures on its test streams."""
    from omegaconf import OmegaConf

    from kws.stages.stream import measure

    out = {}
    for runtime in ("tflite", "tflite_int8"):
        sc = OmegaConf.create(OmegaConf.to_container(cfg.stream, resolve=True) | {"runtime": runtime})
        metrics, point, _ = measure(sc, Path(cfg.paths.features), Path(cfg.paths.model))
        out[runtime] = {"settings": point["settings"], "validation": point["operating_point"]["validation"],
                        **{k: metrics["test"][k] for k in STREAM_KEYS}}
    return out


class OriginalStreams:
    """The original model as the stream benchmark's predictor: 1 s windows at the stride, each
    through ITS front end (the stream resampled once to 22.05 kHz, 13 MFCCs, n_fft 2048, hop 512)
    and its Keras model; its 30 words folded into our labels (a keyword is itself, any other word
    ``_unknown_``; it has no ``_silence_``). The same detector and sweep choose its operating point."""

    window_s = 1.0

    def __init__(self, original: OriginalModel, labels: list[str]):
        from types import SimpleNamespace

        from kws.streaming.detector import DetectorSettings

        self.model, self.labels = original.model, list(labels)
        self.cfg = SimpleNamespace(sample_rate=16000)
        self.detector = DetectorSettings()
        fold = np.zeros((len(ORIGINAL_WORDS), len(self.labels)), np.float32)
        for i, word in enumerate(ORIGINAL_WORDS):
            fold[i, self.labels.index(word) if word in self.labels else self.labels.index("_unknown_")] = 1.0
        self._fold = fold

    def scan(self, samples: np.ndarray, stride_s: float) -> tuple[np.ndarray, np.ndarray]:
        import librosa
        from legacy_serving import HOP_LENGTH, N_FFT, N_MFCC, SAMPLES_TO_CONSIDER

        sr = 22050
        wave = librosa.resample(np.asarray(samples, np.float32), orig_sr=16000, target_sr=sr)
        starts = np.arange(0.0, len(samples) / 16000 - self.window_s + 1e-9, stride_s)
        windows = np.stack([wave[int(round(t * sr)):int(round(t * sr)) + SAMPLES_TO_CONSIDER] for t in starts])
        mfcc = librosa.feature.mfcc(y=windows, sr=sr, n_mfcc=N_MFCC, n_fft=N_FFT, hop_length=HOP_LENGTH)
        x = np.swapaxes(mfcc, -1, -2)[..., None].astype(np.float32)
        return starts, self.model.predict(x, batch_size=256, verbose=0) @ self._fold

    def detect(self, starts, scores, duration_s=None, settings=None):
        from kws.serving.predictor import window_detections

        return window_detections(self.labels, self.window_s, settings or self.detector, starts, scores, duration_s)


def original_streams(cfg, original: OriginalModel, labels: list[str]) -> dict:
    """The original model on this fold's very streams, its operating point chosen the same way."""
    from omegaconf import OmegaConf

    from kws.stages.stream import split_streams, thresholds
    from kws.streaming import benchmark as bm

    sc, features, pred = cfg.stream, Path(cfg.paths.features), OriginalStreams(original, labels)
    stride, tol, late = float(sc.stride_s), float(sc.tolerance_s), sc.get("max_latency_s")
    val, _ = split_streams(features, "validation", sc, 16000)
    test, _ = split_streams(features, "test", sc, 16000)
    grid = bm.settings_grid(OmegaConf.to_container(sc.smoothing, resolve=True))
    chosen = bm.choose(pred, bm.score_streams(pred, val, stride), grid, thresholds(sc.thresholds),
                       float(sc.target_fa_per_hour), tol, late)
    at_test = bm.outcome(pred, bm.score_streams(pred, test, stride), chosen["settings"], tol, late).summary()
    return {"settings": chosen["settings"].to_dict(), "validation": {"recall": chosen["row"]["recall"]},
            **{k: at_test[k] for k in STREAM_KEYS}}


def pooled_stream(folds: list[dict], runtime: str) -> dict:
    """Test streams of every fold as one: recall and false accepts per hour over all of them."""
    rows = [f["stream"][runtime] for f in folds]
    hits, said = sum(r["hits"] for r in rows), sum(r["keywords_said"] for r in rows)
    late, fas, hours = sum(r["late"] for r in rows), sum(r["false_accepts"] for r in rows), sum(r["hours"] for r in rows)
    return {"recall": hits / said, "recall_on_time": (hits - late) / said, "false_accepts_per_hour": fas / hours,
            "wrong_words": sum(r["wrong_words"] for r in rows), "keywords_said": said, "hours": hours,
            "latency_max_s": max((r["latency_s"].get("max", 0.0) or 0.0) for r in rows),
            "per_fold": [{k: r[k] for k in ("recall", "false_accepts_per_hour", "settings")} for r in rows]}


def _slim(result: dict) -> tuple[dict, list]:
    """``score``'s result without its per-clip rows, and those rows as ``[folder/file, true, predicted]``
    (the rows go to the git-ignored sidecar, :func:`write_clips`; the summary keeps the counts that
    :func:`pooled` needs)."""
    rows = [[Path(p["file"]).parent.name + "/" + Path(p["file"]).name, p["true"], p["predicted"]]
            for p in result["predictions"]]
    return {k: v for k, v in result.items() if k != "predictions"}, rows


def clips_path(out_path: Path) -> Path:
    """The per-clip sidecar of a result file: ``results/clips/<name>.json`` (git-ignored)."""
    return out_path.parent / "clips" / out_path.name


def write_clips(out_path: Path, name: str, folds: list[dict]) -> None:
    """Merge this run's per-clip rows (``candidate -> fold -> rows``) into the sidecar of ``out_path``."""
    path = clips_path(out_path)
    clips = json.loads(path.read_text()) if path.is_file() else {}
    for f in folds:
        if "clips" in f:
            clips.setdefault(name, {})[str(f["fold"])] = f.pop("clips")
    if clips:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(clips) + "\n")


# --------------------------------------------------------------------------- pooling
def pooled(folds: list[dict], who: str) -> dict:
    """The folds' test clips as one pool, from each fold's per-class counts (``n``, ``correct``)."""
    from kws.labels import SILENCE
    from kws.scoring.summary import wilson

    counts = {}  # label -> [clips, correct] over the folds
    for f in folds:
        for label, c in f[who]["per_class"].items():
            counts.setdefault(label, [0, 0])
            counts[label][0] += c["n"]
            counts[label][1] += c["correct"]
    per_class = {label: {"n": n, "recall": c / n, "ci95": list(wilson(c, n))}
                 for label, (n, c) in sorted(counts.items())}
    n, k = sum(f[who]["n"] for f in folds), sum(f[who]["correct"] for f in folds)
    n2 = sum(n for label, (n, _) in counts.items() if label != SILENCE)
    k2 = sum(c for label, (_, c) in counts.items() if label != SILENCE)
    accs = [f[who]["accuracy"] for f in folds]
    lat = [f[who]["latency_ms"]["p50"] for f in folds if f[who]["latency_ms"]["p50"] is not None]
    return {
        "n": n, "accuracy": k / n, "ci95": list(wilson(k, n)),
        "fold_accuracy_mean": float(np.mean(accs)), "fold_accuracy_std": float(np.std(accs)),
        "accuracy_without_silence": k2 / n2, "ci95_without_silence": list(wilson(k2, n2)),
        "per_class": per_class, "min_recall": min(v["recall"] for v in per_class.values()),
        "latency_p50_ms": float(np.median(lat)) if lat else None,
    }


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
    args = parser.parse_args(argv)
    out_path = (Path(args.out).resolve() if Path(args.out).parent != Path(".")  # before the chdir below
                else REPO / "benchmarks" / "results" / args.out)
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


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def report(results: dict) -> None:
    """The console table, then the same as Markdown (the docs' tables come from ``benchmarks/report.py``)."""
    rows, md = [], []
    for name, e in results["candidates"].items():
        o, g = e["ours"], e["original"]
        pc = o["per_class"]
        md.append(f"| {name} | {len(e['folds'])} | {o['n']} | **{_pct(o['accuracy'])}** [{_pct(o['ci95'][0])}, "
                  f"{_pct(o['ci95'][1])}] | {_pct(o['min_recall'])} | {_pct(pc['_unknown_']['recall'])} | "
                  f"{_pct(pc['_silence_']['recall'])} | "
                  + (f"{_pct(g['accuracy'])} [{_pct(g['ci95'][0])}, {_pct(g['ci95'][1])}] | "
                     f"{_pct(g['accuracy_without_silence'])} |" if g else "– | – |")
                  + f" {e['params_count']:,} | {e['train_seconds_per_fold'] / 60:.1f} |")
        o, g = e["ours"], e["original"]
        rows.append([name, len(e["folds"]), o["n"], f"{o['accuracy']:.3f} [{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}]",
                     f"{o['min_recall']:.3f}", f"{o['per_class'].get('_unknown_', {}).get('recall', float('nan')):.3f}",
                     f"{o['per_class'].get('_silence_', {}).get('recall', float('nan')):.3f}",
                     f"{g['accuracy']:.3f}" if g else "-", f"{g['accuracy_without_silence']:.3f}" if g else "-",
                     f"{o['latency_p50_ms']:.2f}" if o["latency_p50_ms"] else "-", e["params_count"]])
    print(table(rows, ["candidate", "folds", "clips", "accuracy [95% CI]", "min recall", "unknown", "silence",
                       "original", "orig. w/o silence", "p50 ms", "params"]))
    print("\n| candidate | folds | clips | accuracy % [95 % CI] | min class recall | `_unknown_` | `_silence_` "
          "| original model, same clips | original w/o silence | params | train min/fold |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(md))
    for name, e in results["candidates"].items():
        for v, o in e.get("variants", {}).items():
            print(f"{name}, {v}: {_pct(o['accuracy'])} % [{_pct(o['ci95'][0])}, {_pct(o['ci95'][1])}], weakest class "
                  f"{_pct(o['min_recall'])}, p50 {o['latency_p50_ms']:.2f} ms")
        for rt, st in e.get("stream", {}).items():
            print(f"{name}, streams, {rt}: recall {_pct(st['recall'])} % ({_pct(st['recall_on_time'])} % in time) at "
                  f"{st['false_accepts_per_hour']:.1f} FA/h over {st['hours']:.2f} h, latest {st['latency_max_s']:.2f} s")
    for name, e in results["candidates"].items():
        print(f"{name} per class: " + ", ".join(f"{k} {_pct(v['recall'])}" for k, v in e["ours"]["per_class"].items()))


if __name__ == "__main__":
    raise SystemExit(main())
