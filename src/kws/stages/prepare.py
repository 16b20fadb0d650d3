"""DVC stage `prepare`: dataset folder -> features per split (NPZ) + meta.json.

Every clip becomes 16 kHz mono, padded/cropped to 1 s; training clips get the
configured augmented copies (speed, time shift, background noise at a random SNR);
features come from :mod:`kws.features`, the same code the service runs. Extra sources
(``data.extra``, materialized by the download stage) add weighted training examples
only. Work is spread over all cores in chunks, with a progress bar. Unreadable clips
are skipped and reported. Ctrl-C or SIGTERM cancels the queued chunks, stops the workers and
removes the half-built output; the previous features stay as they were. ``test_examples.json`` lists the test split exactly, so a
model with another front end can be re-scored on the same clips (see promote);
``validation_examples.json`` the validation split (the stream stage's validation streams).
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from kws.artifacts import META_FILE, TEST_EXAMPLES_FILE, VALIDATION_EXAMPLES_FILE
from kws.atomic import staged_dir
from kws.audio import load_file
from kws.dataset import AugmentConfig, Example, ExtraSource, SplitConfig, build_index, render
from kws.errors import ConfigError, DatasetError
from kws.features import FeatureConfig, extract
from kws.labels import BACKGROUND_NOISE_DIR, task_labels
from kws.splits import SPLITS, TEST, VALIDATION
from kws.cli import uninterrupted
from kws.workers import process_pool

log = logging.getLogger(__name__)


# Per-process state of the feature workers (set by _init_worker).
_ROOTS: list[Path] = []
_NOISE: list[np.ndarray] = []
_FEATURES: FeatureConfig | None = None


def _init_worker(roots: list[str], noise_files: list[str], features: dict) -> None:
    global _ROOTS, _NOISE, _FEATURES
    _ROOTS = [Path(r) for r in roots]
    _FEATURES = FeatureConfig.from_dict(features)
    _NOISE = [load_file(p, _FEATURES.sample_rate) for p in noise_files]


def _featurize(chunk: list[Example]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Render and featurize a chunk; returns (features, kept mask, unreadable sources)."""
    import soundfile as sf

    cfg = _FEATURES
    waves = np.zeros((len(chunk), cfg.clip_samples), np.float32)
    kept = np.ones(len(chunk), bool)
    bad = []
    for i, ex in enumerate(chunk):
        try:
            waves[i] = render(ex, _ROOTS, _NOISE, cfg.clip_samples, cfg.sample_rate)
        except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as err:
            kept[i] = False
            bad.append(f"{ex.source}: {err}")
    return extract(waves[kept], cfg), kept, bad


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def featurize_split(
    examples: list[Example], pool: ProcessPoolExecutor, batch_size: int, desc: str, shape: tuple[int, int]
) -> tuple[dict[str, np.ndarray], list[Example], list[str]]:
    """Features of ``examples`` -> (arrays ``x``, ``y``, ``w`` weights, ``files``; the examples kept; unreadable)."""
    xs, kept_examples, bad = [], [], []
    with tqdm(total=len(examples), desc=desc, unit="clip", leave=False) as bar:
        chunks = _chunks(examples, batch_size)
        # map submits every chunk before it returns: a signal landing inside a submit can leave the
        # pool half-updated and its shutdown waiting forever, so it is delivered once they are queued
        with uninterrupted():
            results = pool.map(_featurize, chunks)
        for chunk, (feats, kept, chunk_bad) in zip(chunks, results):
            xs.append(feats)
            kept_examples.extend(ex for ex, k in zip(chunk, kept) if k)
            bad.extend(chunk_bad)
            bar.update(len(chunk))
    arrays = {
        "x": np.concatenate(xs) if xs else np.zeros((0, *shape), np.float32),
        "y": np.asarray([ex.label for ex in kept_examples], np.int16),
        "w": np.asarray([ex.weight for ex in kept_examples], np.float32),
        "files": np.asarray([ex.source or "_silence_" for ex in kept_examples]),
    }
    return arrays, kept_examples, bad


def split_config(data) -> SplitConfig:
    """``data.split`` (absent: the archive's lists, else the hash rule)."""
    split = (data or {}).get("split") or {}
    return SplitConfig(**{k: split[k] for k in ("method", "folds", "test_fold", "validation_percentage", "train_share")
                          if k in split})


def extra_sources(data, extra_dir: Path) -> list[ExtraSource]:
    """``data.extra`` entries as materialized by the download stage under ``extra_dir/<name>``."""
    out = []
    for entry in (data or {}).get("extra") or []:
        root = extra_dir / str(entry["name"])
        if not root.is_dir():
            raise DatasetError(f"extra source {entry['name']!r} not found at {root}: run the download stage first")
        share = entry.get("unknown_percentage")
        if share is not None and not (isinstance(share, (int, float)) and not isinstance(share, bool) and share >= 0):
            raise ConfigError(f"data.extra entry {entry['name']!r}: unknown_percentage must be a number >= 0, got {share!r}")
        copies = entry.get("copies")
        if copies is not None and not (isinstance(copies, int) and not isinstance(copies, bool) and copies >= 0):
            raise ConfigError(f"data.extra entry {entry['name']!r}: copies must be a whole number >= 0, got {copies!r}")
        out.append(ExtraSource(root=root, name=str(entry["name"]), weight=float(entry.get("weight", 1.0)),
                               unknown_percentage=None if share is None else float(share), copies=copies))
    return out


def prepare(cfg, dataset: Path, out_dir: Path, source_info: dict | None = None,
            extra_dir: Path | None = None) -> dict:
    features = FeatureConfig.from_dict(cfg.features)
    prep = cfg.prepare
    labels = task_labels(prep.task)
    aug = AugmentConfig(
        copies=int(prep.augment.copies),
        time_shift_ms=float(prep.augment.time_shift_ms),
        background_probability=float(prep.augment.background_probability),
        snr_db=tuple(prep.augment.snr_db),
        speed=tuple(prep.augment.get("speed", (1.0, 1.0))),
        end_aligned=float(prep.augment.get("end_aligned", AugmentConfig.end_aligned)),
        end_gap_ms=tuple(prep.augment.get("end_gap_ms", AugmentConfig.end_gap_ms)),
    )
    extra = extra_sources(cfg.get("data"), extra_dir or Path(OmegaConf.select(cfg, "paths.extra", default="data/raw/extra")))
    index, summary = build_index(
        dataset, labels,
        silence_percentage=prep.silence_percentage, unknown_percentage=prep.unknown_percentage,
        validation_percentage=prep.validation_percentage, testing_percentage=prep.testing_percentage,
        augment=aug, clip_samples=features.clip_samples, sample_rate=features.sample_rate, seed=cfg.seed,
        split=split_config(cfg.get("data")), extra=extra,
    )
    for split in SPLITS:
        if not index[split]:
            raise DatasetError(f"the {split} split of {dataset} is empty: the dataset is too small or its lists are wrong")

    noise_files = [str(dataset / BACKGROUND_NOISE_DIR / n) for n in summary["background_noise_files"]]
    roots = [str(dataset)] + [str(e.root) for e in extra]
    workers = int(prep.workers) or os.cpu_count() or 1
    log.info("featurizing %s examples with %d workers", {s: len(v) for s, v in index.items()}, workers)

    meta = {
        "labels": labels,
        "task": prep.task,
        "features": features.to_dict(),
        "feature_shape": list(features.shape),
        "counts": {},
        "class_counts": {},
        "skipped": [],
        "source": source_info or {},
        "dataset": (cfg.get("data") or {}).get("name"),
        **summary,
    }
    with staged_dir(out_dir) as tmp:
        pool = process_pool(workers, _init_worker, (roots, noise_files, features.to_dict()))
        try:
            for split in SPLITS:
                arrays, kept, bad = featurize_split(index[split], pool, int(prep.batch_size), split, features.shape)
                y = arrays["y"]
                if len(y) == 0:
                    raise DatasetError(f"no readable clips in the {split} split of {dataset}")
                # uncompressed: log-mel/MFCC floats compress by ~10 % at ~30 MB/s, a minute at full size
                np.savez(tmp / f"{split}.npz", **arrays)
                meta["counts"][split] = int(len(y))
                meta["class_counts"][split] = {labels[i]: int(n) for i, n in zip(*np.unique(y, return_counts=True))}
                meta["skipped"] += bad
                if split in (TEST, VALIDATION):
                    listing = {"dataset": meta["dataset"], "digest": summary.get(f"{split}_digest"), "labels": labels,
                               "root": str(dataset), "noise_files": noise_files,
                               "examples": [asdict(ex) for ex in kept]}
                    name = TEST_EXAMPLES_FILE if split == TEST else VALIDATION_EXAMPLES_FILE
                    (tmp / name).write_text(json.dumps(listing) + "\n")
        except BaseException:
            # interrupted or failed: drop the queued chunks; the workers finish the one in hand and exit
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
        if meta["skipped"]:
            log.warning("skipped %d unreadable clips, e.g. %s", len(meta["skipped"]), meta["skipped"][0])
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    log.info("wrote %s: %s (skipped %d)", out_dir, meta["counts"], len(meta["skipped"]))
    return meta


def _source_info(dataset: Path) -> dict:
    info_file = dataset.with_suffix(".json")
    if info_file.is_file():
        return json.loads(info_file.read_text())
    return {"sha256": None, "note": f"{info_file} not found"}


def _run(cfg) -> None:
    dataset = Path(cfg.paths.dataset)
    prepare(cfg, dataset, Path(cfg.paths.features), _source_info(dataset))


def main(argv: list[str] | None = None) -> int:
    from kws.cli import stage_cli

    return stage_cli("kws-prepare", __doc__.splitlines()[0], _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
