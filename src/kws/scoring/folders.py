"""The clips of a labelled folder and their true labels, in the model's label set.

Folder layouts (``layout``):

* ``archive`` — the Speech Commands archive, ``<word>/<speaker>_nohash_<n>.wav``: a word that
  is a model label is itself, any other word is ``_unknown_`` (when the model has it); folders
  starting with ``_`` are skipped except ``_silence_``. ``silence_dir`` adds every .wav of
  another folder as ``_silence_``.
* ``canonical`` — the official canonical test set, ``<class>/*.wav`` with ``_unknown_`` and
  ``_silence_`` among the class folders; every folder must be a model label.
* ``auto`` — canonical when there is a ``_unknown_`` or ``_silence_`` folder and every folder
  is a model label, else archive.

``list_file`` keeps only the clips listed (``word/file.wav`` a line, as ``testing_list.txt``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from kws.errors import ConfigError, DatasetError
from kws.labels import SILENCE, UNKNOWN

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "archive", "canonical")
Item = tuple[Path, str]  # (clip, true label)


def _wavs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".wav" and p.is_file())


def _read_list(list_file: str | Path) -> set[str]:
    path = Path(list_file)
    if not path.is_file():
        raise DatasetError(f"list file {path} not found")
    lines = (line.strip().replace("\\", "/") for line in path.read_text().splitlines())
    return {line.removeprefix("./") for line in lines if line and not line.startswith("#")}


def _folder_label(name: str, labels: Sequence[str], layout: str, folder: Path) -> str | None:
    """The true label of the clips in the sub-folder ``name``; ``None``: the folder is skipped."""
    if layout == "canonical":
        if name not in labels:
            raise DatasetError(f"folder {name!r} in {folder} is not a label of the model ({', '.join(labels)}); "
                               "a canonical layout has one folder per model label (try --layout archive)")
        return name
    if name.startswith("_"):
        return SILENCE if name == SILENCE and SILENCE in labels else None
    if name in labels:
        return name
    return UNKNOWN if UNKNOWN in labels else None


def _keep_listed(items: list[Item], list_file: str | Path, folder: Path) -> list[Item]:
    wanted = _read_list(list_file)
    items = [(p, t) for p, t in items if f"{p.parent.name}/{p.name}" in wanted]
    if len(wanted) > len(items):
        log.warning("%d of the %d clips in %s are not in %s", len(wanted) - len(items), len(wanted), list_file, folder)
    return items


def _silence_items(silence_dir: str | Path, labels: Sequence[str]) -> list[Item]:
    silence_dir = Path(silence_dir)
    if not silence_dir.is_dir():
        raise DatasetError(f"silence folder {silence_dir} not found (or not a directory)")
    if SILENCE not in labels:
        raise ConfigError(f"--silence-dir given but the model has no {SILENCE} label")
    return [(p, SILENCE) for p in _wavs(silence_dir)]


def collect(folder: str | Path, labels: Sequence[str], layout: str = "auto", silence_dir: str | Path | None = None,
            list_file: str | Path | None = None) -> tuple[list[Item], str]:
    """The clips of ``folder`` with their true labels (``labels``: the model's), and the layout used."""
    folder, labels = Path(folder), list(labels)
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if not folder.is_dir():
        raise DatasetError(f"folder {folder} not found (or not a directory)")
    dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))  # is_dir follows links
    if layout == "auto":
        names = {d.name for d in dirs}
        layout = "canonical" if names & {SILENCE, UNKNOWN} and names <= set(labels) else "archive"
    items: list[Item] = []
    skipped: list[str] = []
    for d in dirs:
        true = _folder_label(d.name, labels, layout, folder)
        if true is None:
            skipped.append(d.name)
        else:
            items += [(p, true) for p in _wavs(d)]
    if skipped:
        log.info("skipped folders (no matching model label): %s", ", ".join(skipped))
    if list_file is not None:
        items = _keep_listed(items, list_file, folder)
    if silence_dir is not None:
        items += _silence_items(silence_dir, labels)
    if not items:
        raise DatasetError(f"no .wav clips found in {folder} ({layout} layout) for labels {', '.join(labels)}")
    log.info("%d clips in %s (%s layout)", len(items), folder, layout)
    return items, layout
