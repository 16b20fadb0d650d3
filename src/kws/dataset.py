"""Build the labelled example index of a Speech Commands-layout dataset.

Mirrors the reference TensorFlow ``speech_commands/input_data.py`` semantics, in our own
code: the keyword words are their own classes, every other word is pooled into
``_unknown_`` (sampled to ``unknown_percentage`` of the keyword examples per split), and
``_silence_`` examples (``silence_percentage``) are cut from ``_background_noise_``.
All random choices are drawn here, once, from one seeded generator, so the rendered
dataset is identical whatever the number of worker processes.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from kws.errors import DatasetError
from kws.labels import BACKGROUND_NOISE_DIR, SILENCE, UNKNOWN
from kws.splits import SPLITS, TRAIN, assign_splits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One example to render: a clip (``source`` relative path) or silence (``source == ""``)."""

    source: str
    label: int
    shift: int = 0  # samples; positive = later in the window
    noise: int = -1  # index into the background-noise list, -1 = none
    noise_offset: int = 0
    snr_db: float = 0.0  # for clips with noise
    gain: float = 0.0  # for silence examples: absolute noise volume


@dataclass(frozen=True)
class AugmentConfig:
    copies: int = 0
    time_shift_ms: float = 100.0
    background_probability: float = 0.8
    snr_db: tuple[float, float] = (5.0, 20.0)


def scan(root: Path) -> tuple[list[str], list[Path]]:
    """Relative paths of all word clips and the background-noise files under ``root``."""
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist: run the download stage first")
    clips = sorted(
        p.relative_to(root).as_posix()
        for p in root.glob("*/*.wav")
        if not p.parent.name.startswith("_")
    )
    if not clips:
        raise DatasetError(
            f"no clips found in {root}: expected the Speech Commands layout <word>/<speaker>_nohash_<n>.wav"
        )
    noise = sorted((root / BACKGROUND_NOISE_DIR).glob("*.wav"))
    return clips, noise


def noise_lengths(noise_files: list[Path], sample_rate: int) -> list[int]:
    """Length in samples (at ``sample_rate``) of each background-noise file."""
    return [int(sf.info(str(p)).frames * sample_rate / sf.info(str(p)).samplerate) for p in noise_files]


def build_index(
    root: Path,
    labels: list[str],
    *,
    silence_percentage: float,
    unknown_percentage: float,
    validation_percentage: float,
    testing_percentage: float,
    augment: AugmentConfig,
    clip_samples: int,
    sample_rate: int,
    seed: int,
) -> tuple[dict[str, list[Example]], dict]:
    """Examples per split plus a summary of how they were chosen."""
    rng = np.random.default_rng(seed)
    clips, noise_files = scan(root)
    noise_len = noise_lengths(noise_files, sample_rate)
    usable_noise = [i for i, n in enumerate(noise_len) if n >= clip_samples]
    split_of, method = assign_splits(root, clips, validation_percentage, testing_percentage)
    index = {label: i for i, label in enumerate(labels)}
    has_unknown = UNKNOWN in index

    known: dict[str, list[Example]] = {s: [] for s in SPLITS}
    unknown: dict[str, list[Example]] = {s: [] for s in SPLITS}
    ignored = Counter()
    for rel in clips:
        word = rel.split("/", 1)[0]
        split = split_of[rel]
        if word in index:
            known[split].append(Example(rel, index[word]))
        elif has_unknown:
            unknown[split].append(Example(rel, index[UNKNOWN]))
        else:
            ignored[word] += 1
    if not any(known.values()):
        raise DatasetError(f"none of the task's words {labels} occur in {root}")

    def noise_cut() -> tuple[int, int]:
        i = int(rng.choice(usable_noise))
        return i, int(rng.integers(0, noise_len[i] - clip_samples + 1))

    out: dict[str, list[Example]] = {}
    for split in SPLITS:
        examples = list(known[split])
        base = len(examples)
        if has_unknown and unknown[split]:
            n_unknown = min(len(unknown[split]), math.ceil(base * unknown_percentage / 100))
            picked = rng.permutation(len(unknown[split]))[:n_unknown]
            examples += [unknown[split][i] for i in sorted(picked)]
        if SILENCE in index and usable_noise:
            for _ in range(math.ceil(base * silence_percentage / 100)):
                i, off = noise_cut()
                examples.append(Example("", index[SILENCE], noise=i, noise_offset=off, gain=float(rng.uniform(0, 1))))
        if split == TRAIN and augment.copies > 0:
            max_shift = int(augment.time_shift_ms / 1000 * sample_rate)
            extra = []
            for _ in range(augment.copies):
                for ex in examples:
                    if ex.source == "":  # new silence cut rather than a shifted copy
                        i, off = noise_cut()
                        extra.append(Example("", ex.label, noise=i, noise_offset=off, gain=float(rng.uniform(0, 1))))
                        continue
                    shift = int(rng.integers(-max_shift, max_shift + 1)) if max_shift else 0
                    if usable_noise and rng.random() < augment.background_probability:
                        i, off = noise_cut()
                        snr = float(rng.uniform(*augment.snr_db))
                        extra.append(Example(ex.source, ex.label, shift, i, off, snr))
                    else:
                        extra.append(Example(ex.source, ex.label, shift))
            examples += extra
        order = rng.permutation(len(examples))
        out[split] = [examples[i] for i in order]

    if not usable_noise:
        log.warning("no usable %s recordings in %s: no silence examples, no noise augmentation", BACKGROUND_NOISE_DIR, root)
    summary = {
        "split_method": method,
        "clips_found": len(clips),
        "background_noise_files": [p.name for p in noise_files],
        "ignored_words": dict(ignored),
        "speakers_per_split": {s: len({Path(e.source).name.split("_nohash_")[0] for e in out[s] if e.source}) for s in SPLITS},
    }
    return out, summary


def render(example: Example, root: Path, noise: list[np.ndarray], clip_samples: int, sample_rate: int) -> np.ndarray:
    """The 1 s waveform of one example (load, shift, mix noise)."""
    from kws.audio import fix_length, load_file

    if example.source == "":
        if example.noise < 0:
            return np.zeros(clip_samples, np.float32)
        cut = noise[example.noise][example.noise_offset : example.noise_offset + clip_samples]
        return (cut * example.gain).astype(np.float32)
    wave = fix_length(load_file(root / example.source, sample_rate), clip_samples)
    if example.shift:
        shifted = np.zeros_like(wave)
        if example.shift > 0:
            shifted[example.shift :] = wave[: -example.shift]
        else:
            shifted[: example.shift] = wave[-example.shift :]
        wave = shifted
    if example.noise >= 0:
        cut = noise[example.noise][example.noise_offset : example.noise_offset + clip_samples]
        p_signal = float(np.mean(wave**2))
        p_noise = float(np.mean(cut**2))
        if p_signal > 0 and p_noise > 0:
            scale = math.sqrt(p_signal / (p_noise * 10 ** (example.snr_db / 10)))
            wave = wave + scale * cut
        peak = float(np.max(np.abs(wave)))
        if peak > 1.0:
            wave = wave / peak
    return wave.astype(np.float32)
