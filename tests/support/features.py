"""A tiny features folder exactly as the prepare stage writes it (for fast training-stage tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kws.features import FeatureConfig

LABELS = ["yes", "no", "up"]


def tiny_features_dir(root: Path, kind: str = "mfcc", n_train: int = 48, n_val: int = 12,
                      unknown_words: tuple[str, ...] = ()) -> Path:
    """``root/features``: noise shaped like ``kind`` features with a class-dependent offset (learnable).
    With ``unknown_words`` the labels start with ``_unknown_``, whose examples are those words in turn
    (``files`` ``<word>/<i>.wav``, each word its own offset)."""
    feats = FeatureConfig(kind=kind)
    labels = ["_unknown_", *LABELS] if unknown_words else LABELS
    rng = np.random.default_rng(0)
    out = root / "features"
    out.mkdir(parents=True)
    for split, n in (("train", n_train), ("validation", n_val)):
        y = np.arange(n) % len(labels)
        words = [unknown_words[(i // len(labels)) % len(unknown_words)] if unknown_words and label == 0
                 else labels[label] for i, label in enumerate(y)]
        offset = np.asarray([2.0 * label if not (unknown_words and label == 0) else
                             -2.0 * (1 + unknown_words.index(w)) for label, w in zip(y, words)], np.float32)
        x = rng.standard_normal((n, *feats.shape)).astype(np.float32) + offset[:, None, None]
        np.savez(out / f"{split}.npz", x=x, y=y, files=np.asarray([f"{w}/{i}.wav" for i, w in enumerate(words)]))
    meta = {"labels": labels, "features": feats.to_dict(), "task": "keywords",
            "counts": {"train": n_train, "validation": n_val}, "source": {"sha256": "0" * 64}}
    (out / "meta.json").write_text(json.dumps(meta))
    return out
