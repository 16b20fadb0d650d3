"""Train/validation/test splits that never let a speaker cross splits.

Speech Commands ships ``validation_list.txt`` and ``testing_list.txt``; when they are
present they decide. Otherwise the dataset's documented rule applies: the SHA-1 of the
speaker id (the file name before ``_nohash_``) picks a stable bucket, so a speaker's
clips always land in the same split, whatever else is added to the dataset later.

A folder of clips that were all chosen by that rule (e.g. part of the canonical test set)
falls in one bucket, so the hash rule would leave the other splits empty. Such a source
uses the seeded speaker split instead (``method: speakers``): the speakers are dealt into
``folds`` folds; fold ``test_fold`` is the test split, a seeded share of the remaining
speakers the validation split. Cross-validation runs the same split with each test fold.
``train_share`` < 1 keeps a seeded share of the training speakers and leaves the rest
``UNUSED`` (a learning curve in speakers), validation and test untouched.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from kws.errors import ConfigError, DatasetError

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)
UNUSED = "unused"  # a speaker split's training speakers left out by train_share

# Largest number of clips per class the hashing rule was designed for (2**27 - 1).
_BUCKETS = 2**27 - 1
_NOHASH = re.compile(r"_nohash_.*$")


def speaker_of(path: str | Path) -> str:
    """The speaker id of a clip: its file name up to ``_nohash_``."""
    return _NOHASH.sub("", Path(path).name)


def split_by_hash(path: str | Path, validation_percentage: float, testing_percentage: float) -> str:
    """Stable split of a clip from the hash of its speaker id (TF speech_commands rule)."""
    digest = int(hashlib.sha1(speaker_of(path).encode("utf-8")).hexdigest(), 16)
    percent = (digest % (_BUCKETS + 1)) * (100.0 / _BUCKETS)
    if percent < validation_percentage:
        return VALIDATION
    if percent < validation_percentage + testing_percentage:
        return TEST
    return TRAIN


def read_list(path: Path) -> set[str]:
    """Relative clip paths (``word/file.wav``) listed in a split file; empty if absent."""
    if not path.is_file():
        return set()
    return {line.strip().replace("\\", "/") for line in path.read_text().splitlines() if line.strip()}


def assign_splits(
    root: Path, rel_paths: list[str], validation_percentage: float, testing_percentage: float,
    *, method: str = "auto", folds: int = 5, test_fold: int = 0, seed: int = 0, train_share: float = 1.0,
) -> tuple[dict[str, str], str]:
    """Map each relative clip path to a split; returns (mapping, method used).

    ``auto``: the dataset's lists when present, else the hash rule; ``lists``; ``hash``;
    ``speakers``: the seeded speaker split (``folds``, ``test_fold``, ``validation_percentage``,
    ``train_share``).
    """
    if method not in ("auto", "lists", "hash", "speakers"):
        raise ConfigError(f"unknown split method {method!r}: use auto, lists, hash or speakers")
    if train_share != 1.0 and method != "speakers":
        raise ConfigError(f"data.split.train_share={train_share:g} needs data.split.method=speakers (got {method!r}): "
                          "the other splits follow the dataset's lists or hashes, not a share of speakers")
    if method == "speakers":
        split_of = split_speakers((speaker_of(r) for r in rel_paths), folds, test_fold, validation_percentage, seed,
                                  train_share)
        return {rel: split_of[speaker_of(rel)] for rel in rel_paths}, "speakers"
    validation = read_list(root / "validation_list.txt")
    testing = read_list(root / "testing_list.txt")
    if method == "lists" and not (validation or testing):
        raise DatasetError(f"split method `lists` but {root} has no validation_list.txt / testing_list.txt")
    if method != "hash" and (validation or testing):
        out = {}
        for rel in rel_paths:
            out[rel] = VALIDATION if rel in validation else TEST if rel in testing else TRAIN
        return out, "lists"
    return {rel: split_by_hash(rel, validation_percentage, testing_percentage) for rel in rel_paths}, "hash"

def speaker_folds(speakers: Iterable[str], folds: int, seed: int) -> dict[str, int]:
    """Deal the distinct ``speakers`` into ``folds`` folds of near-equal size (seeded, stable
    for a given set of speakers: sorted first, then shuffled)."""
    ordered = sorted(set(speakers))
    if folds < 2:
        raise ConfigError(f"data.split.folds must be at least 2, got {folds}")
    if len(ordered) < folds:
        raise DatasetError(f"only {len(ordered)} speakers for {folds} folds: use fewer folds or more data")
    order = np.random.default_rng(seed).permutation(len(ordered))
    return {ordered[j]: rank % folds for rank, j in enumerate(order)}


def split_speakers(
    speakers: Iterable[str], folds: int, test_fold: int, validation_percentage: float, seed: int,
    train_share: float = 1.0,
) -> dict[str, str]:
    """Speaker -> split for the seeded speaker split. Never leaves a split empty: it raises
    :class:`DatasetError` when there are too few speakers for three non-empty splits. The
    training speakers ``train_share`` leaves out are ``UNUSED``; which speakers are validation and
    test does not depend on it, so runs at different shares are scored on the same clips."""
    if not 0 <= test_fold < folds:
        raise ConfigError(f"data.split.test_fold must be in [0, {folds}), got {test_fold}")
    if not 0.0 < train_share <= 1.0:
        raise ConfigError(f"data.split.train_share is a share of the training speakers, in (0, 1]; got {train_share!r}")
    fold_of = speaker_folds(speakers, folds, seed)
    rest = sorted(s for s, f in fold_of.items() if f != test_fold)
    n_val = max(1, math.ceil(len(rest) * validation_percentage / 100))
    if n_val >= len(rest):
        raise DatasetError(
            f"{len(fold_of)} speakers are too few for train, validation and test splits "
            f"({folds} folds, {validation_percentage:g} % validation): add speakers or lower the percentages"
        )
    validation = {rest[i] for i in np.random.default_rng(seed + 1).permutation(len(rest))[:n_val]}
    train = [s for s in rest if s not in validation]
    kept = {train[i] for i in np.random.default_rng(seed + 2).permutation(len(train))[:math.ceil(len(train) * train_share)]}
    return {s: TEST if f == test_fold else VALIDATION if s in validation else TRAIN if s in kept else UNUSED
            for s, f in fold_of.items()}
