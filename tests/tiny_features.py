"""A tiny features folder exactly as the prepare stage writes it (for fast training-stage tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kws.features import FeatureConfig

LABELS = ["yes", "no", "up"]


def tiny_features_dir(root: Path, kind: str = "mfcc", n_train: int = 48, n_val: int = 12) -> Path:
    """``root/features``: noise shaped like ``kind`` features with a class-dependent offset (learnable)."""
    feats = FeatureConfig(kind=kind)
    rng = np.random.default_rng(0)
    out = root / "features"
    out.mkdir(parents=True)
    for split, n in (("train", n_train), ("validation", n_val)):
        y = np.arange(n) % len(LABELS)
        x = rng.standard_normal((n, *feats.shape)).astype(np.float32) + y[:, None, None] * 2.0
        np.savez(out / f"{split}.npz", x=x, y=y)
    meta = {"labels": LABELS, "features": feats.to_dict(), "task": "keywords",
            "counts": {"train": n_train, "validation": n_val}, "source": {"sha256": "0" * 64}}
    (out / "meta.json").write_text(json.dumps(meta))
    return out
