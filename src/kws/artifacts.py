"""The prepare stage's outputs as the later stages read them: ``<features dir>/`` holds one
``<split>.npz`` per split (``x`` features, ``y`` label ids, optional ``w`` per-example weights and
``files`` clip paths), ``meta.json`` (labels, feature config, counts, source) and
``test_examples.json`` (the test split as clips to render again, for re-scoring any bundle).

Written by :mod:`kws.stages.prepare`, read by train, evaluate and promote: the names live here so
that no stage imports another.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kws.errors import DatasetError

META_FILE = "meta.json"
TEST_EXAMPLES_FILE = "test_examples.json"
VALIDATION_EXAMPLES_FILE = "validation_examples.json"  # the stream stage's validation streams


def split_file(features_dir: Path, split: str) -> Path:
    return Path(features_dir) / f"{split}.npz"


def load_split(features_dir: Path, split: str, weights: bool = False):
    """``(x, y)`` of a split (``(x, y, w)`` with ``weights``: per-example weights, 1 when absent)."""
    path = split_file(features_dir, split)
    if not path.is_file():
        raise DatasetError(f"{path} not found: run the prepare stage first")
    with np.load(path) as data:
        x, y = data["x"].astype(np.float32), data["y"].astype(np.int64)
        if not weights:
            return x, y
        w = data["w"].astype(np.float32) if "w" in data.files else np.ones(len(y), np.float32)
        return x, y, w


def load_files(features_dir: Path, split: str) -> np.ndarray:
    """The ``files`` of a split: each example's clip path relative to its source (``word/clip.wav``)."""
    with np.load(split_file(features_dir, split)) as data:
        if "files" not in data.files:
            raise DatasetError(f"{Path(features_dir) / split}.npz has no clip paths: run the prepare stage again")
        return data["files"]


def load_meta(features_dir: Path) -> dict:
    path = Path(features_dir) / META_FILE
    if not path.is_file():
        raise DatasetError(f"{path} not found: run the prepare stage first")
    return json.loads(path.read_text())
