"""DVC stage `prepare`: dataset folder -> MFCC features per split (compressed NPZ) + meta.json.

Every clip becomes 16 kHz mono, padded/cropped to 1 s; training clips get the
configured augmented copies (time shift, background noise at a random SNR); MFCCs
come from :mod:`kws.features`, the same code the service runs. Work is spread over
all cores in chunks, with a progress bar. Unreadable clips are skipped and reported.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kws.atomic import staged_dir
from kws.audio import load_file

from kws.dataset import AugmentConfig, Example, build_index, render
from kws.errors import DatasetError
from kws.features import FeatureConfig, mfcc
from kws.labels import task_labels
from kws.splits import SPLITS

log = logging.getLogger(__name__)

# Per-process state of the feature workers (set by _init_worker).
_ROOT: Path | None = None
_NOISE: list[np.ndarray] = []
_FEATURES: FeatureConfig | None = None


def _init_worker(root: str, noise_files: list[str], features: dict) -> None:
    global _ROOT, _NOISE, _FEATURES
    _ROOT = Path(root)
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
            waves[i] = render(ex, _ROOT, _NOISE, cfg.clip_samples, cfg.sample_rate)
        except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as err:
            kept[i] = False
            bad.append(f"{ex.source}: {err}")
    return mfcc(waves[kept], cfg), kept, bad


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def featurize_split(
    examples: list[Example], pool: ProcessPoolExecutor, batch_size: int, desc: str, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    xs, ys, names, bad = [], [], [], []
    with tqdm(total=len(examples), desc=desc, unit="clip", leave=False) as bar:
        chunks = _chunks(examples, batch_size)
        for chunk, (feats, kept, chunk_bad) in zip(chunks, pool.map(_featurize, chunks)):
            xs.append(feats)
            ys.extend(ex.label for ex, k in zip(chunk, kept) if k)
            names.extend(ex.source or "_silence_" for ex, k in zip(chunk, kept) if k)
            bad.extend(chunk_bad)
            bar.update(len(chunk))
    x = np.concatenate(xs) if xs else np.zeros((0, *shape), np.float32)
    return x, np.asarray(ys, np.int16), np.asarray(names), bad


def prepare(cfg, dataset: Path, out_dir: Path, source_info: dict | None = None) -> dict:
    features = FeatureConfig.from_dict(cfg.features)
    prep = cfg.prepare
    labels = task_labels(prep.task)
    aug = AugmentConfig(
        copies=int(prep.augment.copies),
        time_shift_ms=float(prep.augment.time_shift_ms),
        background_probability=float(prep.augment.background_probability),
        snr_db=tuple(prep.augment.snr_db),
    )
    index, summary = build_index(
        dataset, labels,
        silence_percentage=prep.silence_percentage, unknown_percentage=prep.unknown_percentage,
        validation_percentage=prep.validation_percentage, testing_percentage=prep.testing_percentage,
        augment=aug, clip_samples=features.clip_samples, sample_rate=features.sample_rate, seed=cfg.seed,
    )
    for split in SPLITS:
        if not index[split]:
            raise DatasetError(f"the {split} split of {dataset} is empty: the dataset is too small or its lists are wrong")

    noise_files = [str(dataset / "_background_noise_" / n) for n in summary["background_noise_files"]]
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
        **summary,
    }
    with staged_dir(out_dir) as tmp:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(str(dataset), noise_files, features.to_dict())) as pool:
            for split in SPLITS:
                x, y, names, bad = featurize_split(index[split], pool, int(prep.batch_size), split, features.shape)
                if len(y) == 0:
                    raise DatasetError(f"no readable clips in the {split} split of {dataset}")
                np.savez_compressed(tmp / f"{split}.npz", x=x, y=y, files=names)
                meta["counts"][split] = int(len(y))
                meta["class_counts"][split] = {labels[i]: int(n) for i, n in zip(*np.unique(y, return_counts=True))}
                meta["skipped"] += bad
        if meta["skipped"]:
            log.warning("skipped %d unreadable clips, e.g. %s", len(meta["skipped"]), meta["skipped"][0])
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
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
