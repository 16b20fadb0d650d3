"""Long recordings with known word times, made from ONE split's clips (like TensorFlow's
``generate_streaming_test_wav``).

A stream is a background-noise recording (one of the dataset's ``_background_noise_`` files,
looped, at a fixed level) with the split's clips laid over it one after another, separated by
seeded gaps: a share ``keyword_share`` of them keywords, the rest other words (``_unknown_``
clips). Each word is mixed at its own signal-to-noise ratio drawn from ``snr_db`` (clip power
vs background power, the convention of the training augmentation). The truth is one
:class:`Truth` per word: its label and the time of its energy centroid (where the word is
within its one-second clip), the time a detector's window centre should land on, and the end
of its speech, from which a live detection's latency counts.

Everything is drawn from ``numpy.random.default_rng(recipe.seed)``: the same recipe and clips
give the same waveform and truth. :meth:`StreamRecipe.to_dict` is recorded with the metrics.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kws.audio import load_file, speech_end_s
from kws.errors import ConfigError, DatasetError
from kws.labels import SILENCE, UNKNOWN


@dataclass(frozen=True)
class Clip:
    """One labelled clip of a split: ``path`` on disk, ``label`` a class name (keyword or ``_unknown_``)."""

    path: Path
    label: str

    @property
    def word(self) -> str:
        return self.path.parent.name  # the spoken word (the folder), also for `_unknown_` clips


@dataclass(frozen=True)
class Truth:
    label: str      # keyword, or `_unknown_` for another word
    time_s: float   # the word's energy centroid in the stream
    start_s: float  # where its one-second clip starts
    word: str = ""  # the spoken word (folder name)
    end_s: float | None = None  # where its speech ends (speech_end_s): live latency counts from here


@dataclass(frozen=True)
class StreamRecipe:
    seed: int = 0
    duration_s: float = 60.0
    gap_s: tuple[float, float] = (1.0, 3.0)     # silence between one clip's end and the next clip's start
    snr_db: tuple[float, float] = (5.0, 20.0)   # per word
    keyword_share: float = 0.7                  # share of the words that are keywords
    noise_rms: float = 0.01                     # the background's level (RMS, full scale = 1)

    def __post_init__(self) -> None:
        def pair(name: str, lo_min: float) -> None:
            v = getattr(self, name)
            if len(v) != 2 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v) \
                    or v[0] > v[1] or v[0] < lo_min:
                raise ConfigError(f"stream recipe: {name} must be [low, high] with {lo_min} <= low <= high, got {list(v)}")

        object.__setattr__(self, "gap_s", tuple(self.gap_s))
        object.__setattr__(self, "snr_db", tuple(self.snr_db))
        pair("gap_s", 0.0)
        pair("snr_db", -math.inf)
        if not self.duration_s > 1.0:
            raise ConfigError(f"stream recipe: duration_s must be > 1 s, got {self.duration_s!r}")
        if not 0.0 <= self.keyword_share <= 1.0:
            raise ConfigError(f"stream recipe: keyword_share must be within 0..1, got {self.keyword_share!r}")
        if not self.noise_rms >= 0:
            raise ConfigError(f"stream recipe: noise_rms must be >= 0, got {self.noise_rms!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d, "gap_s": list(self.gap_s), "snr_db": list(self.snr_db)}


@dataclass
class Stream:
    samples: np.ndarray
    sample_rate: int
    truth: list[Truth]
    noise: str                       # the background recording's file name ("" for none)
    recipe: StreamRecipe
    sources: list[str] = field(default_factory=list)  # every clip used, in order

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def split_clips(examples_file: str | Path) -> tuple[list[Clip], list[Path]]:
    """The clips of one split as ``prepare`` records them (``<split>_examples.json``) and the
    background-noise files it lists. Silence examples (no clip) are left out."""
    path = Path(examples_file)
    try:
        doc = json.loads(path.read_text())
        root, labels = Path(doc["root"]), list(doc["labels"])
        clips = [Clip(root / ex["source"], labels[int(ex["label"])]) for ex in doc["examples"]
                 if ex.get("source") and int(ex.get("origin", 0)) == 0]
        noise = [Path(p) for p in doc.get("noise_files", [])]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise DatasetError(f"{path} is not a readable examples list ({err}): run the prepare stage") from None
    clips = [c for c in clips if c.label != SILENCE]
    if not clips:
        raise DatasetError(f"{path} lists no clips")
    return clips, noise


def _centroid(wave: np.ndarray, sample_rate: int) -> float:
    """Seconds from the clip's start to its energy centroid (the middle for a silent clip)."""
    energy = wave.astype(np.float64) ** 2
    total = energy.sum()
    if total <= 0:
        return len(wave) / sample_rate / 2
    return float((np.arange(len(wave)) * energy).sum() / total / sample_rate)


def _background(noise: np.ndarray | None, n: int, rms: float, rng: np.random.Generator) -> np.ndarray:
    if noise is None or len(noise) == 0 or rms == 0:
        return np.zeros(n, np.float32)
    start = int(rng.integers(0, len(noise)))
    reps = int(math.ceil((n + start) / len(noise)))
    loop = np.tile(noise, reps)[start:start + n].astype(np.float64)
    level = float(np.sqrt(np.mean(loop**2)))
    return (loop * (rms / level if level > 0 else 0.0)).astype(np.float32)


def _order(clips: Sequence[Clip], share: float, rng: np.random.Generator):
    """An endless seeded sequence of clips: keywords with probability ``share``, each group
    dealt without replacement (reshuffled when used up)."""
    groups = {True: [c for c in clips if c.label != UNKNOWN], False: [c for c in clips if c.label == UNKNOWN]}
    decks: dict[bool, list[Clip]] = {True: [], False: []}
    while True:
        want = bool(rng.random() < share)
        if not groups[want]:
            want = not want
        if not decks[want]:
            decks[want] = [groups[want][i] for i in rng.permutation(len(groups[want]))]
        yield decks[want].pop()


def generate_stream(clips: Sequence[Clip], noise_files: Sequence[Path], recipe: StreamRecipe,
                    sample_rate: int = 16000, clip_s: float = 1.0) -> Stream:
    """One stream of ``recipe.duration_s`` seconds from ``clips`` over one of ``noise_files``
    (chosen by the seed; none: digital silence)."""
    if not clips:
        raise DatasetError("no clips to build a stream from")
    rng = np.random.default_rng(recipe.seed)
    n = int(round(recipe.duration_s * sample_rate))
    clip_n = int(round(clip_s * sample_rate))
    noise_path = Path(noise_files[int(rng.integers(0, len(noise_files)))]) if noise_files else None
    noise = load_file(noise_path, sample_rate) if noise_path else None
    out = _background(noise, n, recipe.noise_rms, rng).astype(np.float64)
    noise_power = recipe.noise_rms**2 if noise is not None else 0.0
    cache: dict[Path, np.ndarray] = {}
    truth: list[Truth] = []
    sources: list[str] = []
    at = int(round(rng.uniform(*recipe.gap_s) * sample_rate))
    for clip in _order(clips, recipe.keyword_share, rng):
        if at + clip_n > n:
            break
        if clip.path not in cache:
            try:
                cache[clip.path] = load_file(clip.path, sample_rate)[:clip_n]
            except (OSError, RuntimeError, ValueError) as err:
                raise DatasetError(f"clip {clip.path} cannot be read: {err}") from None
        wave = cache[clip.path].astype(np.float64)
        power = float(np.mean(wave**2))
        snr = float(rng.uniform(*recipe.snr_db))
        # the word is scaled, not the background: the background level stays the same all along
        gain = math.sqrt(noise_power * 10 ** (snr / 10) / power) if noise_power > 0 and power > 0 else 1.0
        out[at:at + len(wave)] += gain * wave
        truth.append(Truth(clip.label, round(at / sample_rate + _centroid(wave, sample_rate), 4),
                           at / sample_rate, clip.word, round(at / sample_rate + speech_end_s(wave, sample_rate), 4)))
        sources.append(str(clip.path))
        at += clip_n + int(round(rng.uniform(*recipe.gap_s) * sample_rate))
    peak = float(np.max(np.abs(out))) if n else 0.0
    if peak > 1.0:  # a loud word at a high SNR: scale the whole stream, never clip it
        out /= peak
    return Stream(out.astype(np.float32), sample_rate, truth, noise_path.name if noise_path else "", recipe, sources)


def generate_streams(clips: Sequence[Clip], noise_files: Sequence[Path], recipe: StreamRecipe, count: int,
                     sample_rate: int = 16000) -> list[Stream]:
    """``count`` streams with seeds ``recipe.seed``, ``recipe.seed + 1``, … (so each is reproducible
    alone), stream ``i`` over noise file ``i`` (cycling), so every background is used."""
    if count < 1:
        raise ConfigError(f"the number of streams must be >= 1, got {count}")
    base = recipe.to_dict()
    noise = sorted(Path(p) for p in noise_files)
    return [generate_stream(clips, [noise[i % len(noise)]] if noise else [],
                            StreamRecipe(**{**base, "seed": recipe.seed + i}), sample_rate)
            for i in range(count)]
