"""Build the labelled example index of a Speech Commands-layout dataset.

Mirrors the reference TensorFlow ``speech_commands/input_data.py`` semantics, in our own
code: the keyword words are their own classes, every other word is pooled into
``_unknown_`` (sampled to ``unknown_percentage`` of the keyword examples per split), and
``_silence_`` examples (``silence_percentage``) are real clips from a ``_silence_/`` folder
when the dataset has one, topped up with cuts of ``_background_noise_``.
Extra sources (e.g. synthetic speech) add weighted examples to the TRAINING split only;
the ``_unknown_`` share is always sized and drawn from the primary dataset's own words.
All random choices are drawn here, once, from one seeded generator, so the rendered
dataset is identical whatever the number of worker processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from kws.errors import ConfigError, DatasetError
from kws.labels import BACKGROUND_NOISE_DIR, SILENCE, UNKNOWN
from kws.splits import SPLITS, TEST, TRAIN, UNUSED, assign_splits, speaker_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One example to render: a clip (``source``, relative to root ``origin``) or a cut of
    background noise (``source == ""``)."""

    source: str
    label: int
    shift: int = 0  # samples; positive = later in the window
    noise: int = -1  # index into the background-noise list, -1 = none
    noise_offset: int = 0
    snr_db: float = 0.0  # for clips with noise
    gain: float = 0.0  # for silence examples: absolute noise volume
    speed: float = 1.0  # speed perturbation: > 1 faster (and higher), < 1 slower
    origin: int = 0  # 0: the dataset; i > 0: extra source i (training only)
    weight: float = 1.0  # sample weight in training
    end_gap: int = -1  # >= 0: replaces ``shift``: the speech ends this many samples before the window does


@dataclass(frozen=True)
class AugmentConfig:
    copies: int = 0
    time_shift_ms: float = 100.0
    background_probability: float = 0.8
    snr_db: tuple[float, float] = (5.0, 20.0)
    speed: tuple[float, float] = (1.0, 1.0)  # speed perturbation range (1, 1) = off
    # share of the copies whose word is moved to the window's end instead (its speech ending
    # end_gap_ms before it): the windows that let a live stream answer soon after the word
    end_aligned: float = 0.0
    end_gap_ms: tuple[float, float] = (0.0, 250.0)

    def __post_init__(self) -> None:
        lo, hi = self.end_gap_ms
        if not 0.0 <= self.end_aligned <= 1.0:
            raise ConfigError(f"prepare.augment.end_aligned is a share of the copies, 0..1; got {self.end_aligned!r}")
        if not 0.0 <= lo <= hi < 1000.0:
            raise ConfigError(f"prepare.augment.end_gap_ms must be [low, high] with 0 <= low <= high < 1000 ms; "
                              f"got {list(self.end_gap_ms)!r}")


@dataclass(frozen=True)
class SplitConfig:
    method: str = "auto"  # auto (lists, else hash) | lists | hash | speakers
    folds: int = 5  # speakers: number of speaker folds
    test_fold: int = 0  # speakers: the fold that is the test split
    validation_percentage: float = 10.0  # speakers: share of the non-test speakers
    train_share: float = 1.0  # speakers: share of the training speakers kept (a learning curve; the rest unused)


@dataclass(frozen=True)
class ExtraSource:
    """A folder in the dataset layout used for TRAINING examples only."""

    root: Path
    name: str
    weight: float = 1.0
    unknown_percentage: float | None = None  # its unknown-word examples, % of ITS keyword examples (None: the task's)
    copies: int | None = None  # augmented copies of its examples (None: prepare.augment.copies); 0 for a
                               # source that brings its own augmentation (the negatives)


def scan(root: Path) -> tuple[list[str], list[Path]]:
    """Relative paths of all word clips and the background-noise files under ``root``
    (word folders may be symlinks)."""
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


def silence_clips(root: Path) -> list[str]:
    """Relative paths of real silence clips (``_silence_/*.wav``, as in the canonical test set)."""
    return sorted(p.relative_to(root).as_posix() for p in (root / SILENCE).glob("*.wav"))


def digest(examples: Sequence[Example]) -> str:
    """sha256 of a list of examples: two test splits with the same digest are the same clips,
    labels and noise cuts."""
    rows = sorted(json.dumps(_digest_fields(ex), sort_keys=True) for ex in examples)
    return hashlib.sha256("".join(row + "\n" for row in rows).encode()).hexdigest()


def _digest_fields(example: Example) -> dict:
    # end_gap is newer than the digests in the registry, and only augmented training copies set
    # it: left out while unset, so a test split keeps the digest it was registered with
    fields = asdict(example)
    if fields["end_gap"] < 0:
        del fields["end_gap"]
    return fields


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
    split: SplitConfig = SplitConfig(),
    extra: Sequence[ExtraSource] = (),
) -> tuple[dict[str, list[Example]], dict]:
    """Examples per split plus a summary of how they were chosen. Each split draws from its own
    seeded random stream, so validation and test do not change with training-only settings
    (augmentation, extra sources)."""
    clips, noise_files = scan(root)
    silences = silence_clips(root)
    noise_len = noise_lengths(noise_files, sample_rate)
    usable_noise = [i for i, n in enumerate(noise_len) if n >= clip_samples]
    split_args = dict(method=split.method, folds=split.folds, test_fold=split.test_fold, seed=seed,
                      train_share=split.train_share)
    if split.method == "speakers":
        validation_percentage = split.validation_percentage
    split_of, method = assign_splits(root, clips, validation_percentage, testing_percentage, **split_args)
    silence_split = (assign_splits(root, silences, validation_percentage, testing_percentage,
                                   **{**split_args, "method": "speakers" if method == "speakers" else "hash"})[0]
                     if silences else {})
    index = {label: i for i, label in enumerate(labels)}
    has_unknown = UNKNOWN in index

    def by_split(rels: list[str], split_of: dict[str, str]) -> tuple[dict, dict, Counter]:
        known: dict[str, list[Example]] = {s: [] for s in SPLITS}
        unknown: dict[str, list[Example]] = {s: [] for s in SPLITS}
        ignored = Counter()
        for rel in rels:
            word = rel.split("/", 1)[0]
            if split_of[rel] == UNUSED:
                continue
            if word in index:
                known[split_of[rel]].append(Example(rel, index[word]))
            elif has_unknown:
                unknown[split_of[rel]].append(Example(rel, index[UNKNOWN]))
            else:
                ignored[word] += 1
        return known, unknown, ignored

    known, unknown, ignored = by_split(clips, split_of)
    if not any(known.values()):
        raise DatasetError(f"none of the task's words {labels} occur in {root}")
    real_silence: dict[str, list[Example]] = {s: [] for s in SPLITS}
    if SILENCE in index:
        for rel in silences:
            if silence_split[rel] != UNUSED:
                real_silence[silence_split[rel]].append(Example(rel, index[SILENCE]))

    def noise_cut() -> tuple[int, int]:
        i = int(rng.choice(usable_noise))
        return i, int(rng.integers(0, noise_len[i] - clip_samples + 1))

    def sample(pool: list[Example], n: int) -> list[Example]:
        return [pool[i] for i in sorted(rng.permutation(len(pool))[:n])]

    out: dict[str, list[Example]] = {}
    for k, part in enumerate(SPLITS):
        rng = np.random.default_rng([seed, k])
        examples = list(known[part])
        base = len(examples)
        if has_unknown and unknown[part]:
            examples += sample(unknown[part], min(len(unknown[part]), math.ceil(base * unknown_percentage / 100)))
        if SILENCE in index:
            n_silence = math.ceil(base * silence_percentage / 100)
            real = sample(real_silence[part], n_silence)
            examples += real
            # validation/test silence is real clips only (as in the canonical test set) when there are any
            top_up = n_silence - len(real) if usable_noise and (part == TRAIN or not real) else 0
            for _ in range(top_up):
                i, off = noise_cut()
                examples.append(Example("", index[SILENCE], noise=i, noise_offset=off, gain=float(rng.uniform(0, 1))))
        if part == TRAIN:
            for origin, source in enumerate(extra, start=1):
                extra_clips, _ = scan(source.root)
                e_known, e_unknown, _ = by_split(extra_clips, dict.fromkeys(extra_clips, TRAIN))
                mine = e_known[TRAIN]
                if has_unknown:  # the extra source's own unknown words, as a share of ITS keywords
                    share = unknown_percentage if source.unknown_percentage is None else source.unknown_percentage
                    mine += sample(e_unknown[TRAIN], min(len(e_unknown[TRAIN]), math.ceil(len(mine) * share / 100)))
                examples += [Example(e.source, e.label, origin=origin, weight=source.weight) for e in mine]
        if part == TRAIN:
            copies = [augment.copies] + [augment.copies if e.copies is None else e.copies for e in extra]
            examples += augmented_copies(examples, augment, rng, sample_rate, noise_cut if usable_noise else None,
                                         copies)
        order = rng.permutation(len(examples))
        out[part] = [examples[i] for i in order]

    if not usable_noise:
        log.warning("no usable %s recordings in %s: no noise augmentation, silence only from real clips",
                    BACKGROUND_NOISE_DIR, root)
    summary = {
        "split_method": method,
        "split": asdict(split),
        "clips_found": len(clips),
        "silence_clips_found": len(silences),
        "background_noise_files": [p.name for p in noise_files],
        "extra_sources": [{"name": e.name, "root": str(e.root), "weight": e.weight,
                           "unknown_percentage": e.unknown_percentage, "copies": e.copies} for e in extra],
        "ignored_words": dict(ignored),
        "speakers_per_split": {s: len({speaker_of(r) for r in clips if split_of[r] == s}) for s in SPLITS},
        "speakers_unused": len({speaker_of(r) for r in clips if split_of[r] == UNUSED}),
        "test_digest": digest(out[TEST]),
    }
    return out, summary


def augmented_copies(examples: list[Example], augment: AugmentConfig, rng: np.random.Generator,
                     sample_rate: int, noise_cut, copies: Sequence[int]) -> list[Example]:
    """Perturbed copies of every example, ``copies[example.origin]`` each: time shift (or, for a
    share ``end_aligned``, the word moved to the window's end), speed, background noise at a
    random SNR (``noise_cut`` None: no noise); a noise-cut silence gets a
    fresh cut. Round by round over the examples: with the same count for every origin, the draws
    are those of one count for all."""
    max_shift = int(augment.time_shift_ms / 1000 * sample_rate)
    lo, hi = augment.speed
    wanted = [copies[ex.origin] for ex in examples]
    extra = []
    for round_ in range(max(wanted, default=0)):
        for ex, n in zip(examples, wanted):
            if n <= round_:
                continue
            if ex.source == "":
                i, off = noise_cut()
                extra.append(Example("", ex.label, noise=i, noise_offset=off, gain=float(rng.uniform(0, 1))))
                continue
            shift = int(rng.integers(-max_shift, max_shift + 1)) if max_shift else 0
            speed = float(rng.uniform(lo, hi)) if hi > lo else 1.0
            noise, offset, snr = -1, 0, 0.0
            if noise_cut is not None and rng.random() < augment.background_probability:
                noise, offset = noise_cut()
                snr = float(rng.uniform(*augment.snr_db))
            end_gap = -1  # drawn last and only when asked for: without it, the draws are unchanged
            if augment.end_aligned > 0 and rng.random() < augment.end_aligned:
                end_gap = int(rng.uniform(*augment.end_gap_ms) / 1000 * sample_rate)
            extra.append(Example(ex.source, ex.label, shift, noise, offset, snr, speed=speed,
                                 origin=ex.origin, weight=ex.weight, end_gap=end_gap))
    return extra


def render(example: Example, roots: Sequence[Path], noise: list[np.ndarray], clip_samples: int,
           sample_rate: int) -> np.ndarray:
    """The 1 s waveform of one example (load, speed, shift, mix noise); ``roots[origin]`` holds its clip."""
    from kws.audio import change_speed, fix_length, load_file, snr_gain, speech_end_s, time_shift

    if example.source == "":
        if example.noise < 0:
            return np.zeros(clip_samples, np.float32)
        cut = noise[example.noise][example.noise_offset : example.noise_offset + clip_samples]
        return (cut * example.gain).astype(np.float32)
    wave = load_file(roots[example.origin] / example.source, sample_rate)
    if example.speed != 1.0:
        wave = change_speed(wave, example.speed)
    wave = fix_length(wave, clip_samples)
    shift = example.shift
    if example.end_gap >= 0:
        # a stream's window holds a word this way just after it is said; clip recordings rarely do
        shift = clip_samples - example.end_gap - int(round(speech_end_s(wave, sample_rate) * sample_rate))
    wave = time_shift(wave, shift)
    if example.noise >= 0:
        cut = noise[example.noise][example.noise_offset : example.noise_offset + clip_samples]
        scale = snr_gain(float(np.mean(wave**2)), float(np.mean(cut**2)), example.snr_db)
        if scale:
            wave = wave + scale * cut
        peak = float(np.max(np.abs(wave)))
        if peak > 1.0:
            wave = wave / peak
    return wave.astype(np.float32)
