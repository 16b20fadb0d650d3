"""Train/validation/test splits that never let a speaker cross splits.

Speech Commands ships ``validation_list.txt`` and ``testing_list.txt``; when they are
present they decide. Otherwise the dataset's documented rule applies: the SHA-1 of the
speaker id (the file name before ``_nohash_``) picks a stable bucket, so a speaker's
clips always land in the same split, whatever else is added to the dataset later.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)

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
    root: Path, rel_paths: list[str], validation_percentage: float, testing_percentage: float
) -> tuple[dict[str, str], str]:
    """Map each relative clip path to a split; returns (mapping, method used)."""
    validation = read_list(root / "validation_list.txt")
    testing = read_list(root / "testing_list.txt")
    if validation or testing:
        out = {}
        for rel in rel_paths:
            out[rel] = VALIDATION if rel in validation else TEST if rel in testing else TRAIN
        return out, "lists"
    return {rel: split_by_hash(rel, validation_percentage, testing_percentage) for rel in rel_paths}, "hash"
