"""TRAINING-ONLY negatives: hundreds of other words, and the windows a stream really shows.

Every installed TTS engine (:mod:`kws.tts`: espeak-ng, flite, festival) gives speakers; each
says a share of the vocabulary (``conf/negatives/words.txt``, acoustically close words first)
and every keyword too, so that the voice is no shortcut to ``_unknown_``. Besides whole words,
each speaker gives cut windows, as a stream's 1 s windows fall: a keyword cut at the window's
edge, part of another word, the end of one word and the start of the next. A window is labelled
by how much of each keyword's speech is inside (:func:`cut_label`). Every window then goes
through one augmentation chain (audiomentations): room reverberation (generated impulse
responses), the ``_background_noise_`` recordings, microphone colouring (band-pass or a
seven-band EQ), gain and clipping. Layout (a ``data.extra`` source: never validation or test)::

    <dest>/<word>/<speaker>_nohash_<n>.wav       whole words; keyword cuts as <speaker>_nohash_cut<n>.wav
    <dest>/unknown-cuts/<speaker>_nohash_<n>.wav  windows with too little of any keyword
    <dest>/_impulse_responses_/, _background_noise_/   what the chain used
    <dest>/manifest.csv, README.md                what each clip is: engine, voice, kind, words, share

Every draw comes from a generator seeded by (seed, speaker, clip), so the same settings give
byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kws import tts
from kws.errors import ConfigError, DatasetError
from kws.labels import BACKGROUND_NOISE_DIR, KEYWORDS, UNKNOWN
from kws.parallel import run_parallel
from kws.speakers import choose_speakers
from kws.takes import CLIP_SAMPLES, SAMPLE_RATE, prepare_noise, seeded_rng, write_pcm16

log = logging.getLogger(__name__)

NAME = "negatives"
UNKNOWN_CUTS = "unknown-cuts"
IR_DIR = "_impulse_responses_"
MANIFEST = "manifest.csv"
_PEAK = 0.5  # the window's peak before the chain (the room's and the noise's level are relative to it)
_CUT_KINDS = ("edge", "part", "junction")
_INFLECTIONS = ("s", "es", "ed", "ing", "ped", "ping")


# --- vocabulary ----------------------------------------------------------------------------
def read_vocabulary(path: str | Path) -> list[str]:
    """The words of a vocabulary file (whitespace-separated, ``#`` comments), in file order.
    Raises :class:`ConfigError` for a keyword, a keyword's inflection, a repeat or a non-word."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"negatives vocabulary {path} not found (run from the project root)")
    words = [w for line in path.read_text().splitlines() for w in line.split("#", 1)[0].split()]
    banned = {k + s for k in KEYWORDS for s in ("", *_INFLECTIONS)}
    bad = sorted({w for w in words if w in banned or not w.replace("'", "").replace("-", "").isalpha()
                  or w != w.lower()})
    repeated = sorted({w for w in words if words.count(w) > 1})
    if bad or repeated or not words:
        raise ConfigError(f"{path}: keywords, their inflections or non-words {bad}, repeated {repeated}; "
                          "a negative must be a lower-case word that is not a keyword")
    same = homophones(words)
    if same:
        raise ConfigError(f"{path}: {', '.join(f'{w!r} sounds like {k!r}' for w, k in same.items())}: a word "
                          "said exactly like a keyword is that keyword to a listener; take it out of the vocabulary")
    return words


#: the accents whose pronunciations :func:`homophones` compares (espeak-ng's)
_ACCENTS = ("en-us", "en-gb")


def homophones(words: Sequence[str]) -> dict[str, str]:
    """``{word: keyword}`` for the words espeak-ng says exactly like a keyword in one of
    :data:`_ACCENTS` ("know" and "no", "write" and "right"). Trained as ``_unknown_`` they would
    teach the model that the keyword's own sound is no keyword. Without espeak-ng: not checked (a
    warning)."""
    try:
        found = {}
        for accent in _ACCENTS:
            keys = dict(zip(tts.phonemes(KEYWORDS, accent), KEYWORDS))
            found |= {w: keys[p] for w, p in zip(words, tts.phonemes(words, accent)) if p in keys}
        return found
    except DatasetError as err:
        log.warning("the vocabulary is not checked for homophones of the keywords: %s", err)
        return {}


# --- speakers and what each says ----------------------------------------------------------------
def choose_voices(engines: dict[str, int], seed: int, stretch: Sequence[float],
                  tape: Sequence[float]) -> list[tts.Voice]:
    """``engines[engine]`` speakers of each installed engine (0: none); a configured engine that
    is not installed is left out with a warning."""
    have = tts.installed()
    voices: list[tts.Voice] = []
    for engine, count in engines.items():
        if engine not in tts.ENGINES:
            raise ConfigError(f"negatives.engines: unknown engine {engine!r}; use {list(tts.ENGINES)}")
        if int(count) <= 0:
            continue
        if engine not in have:
            log.warning("%s is not installed: its voices are left out (%s)", engine, tts.INSTALL_HINT)
            continue
        if engine == tts.ESPEAK:
            _, variants = tts.espeak_voices()
            voices += [tts.Voice(engine, s.voice, float(s.speed), s.pitch)
                       for s in choose_speakers(int(count), seed, have[engine], variants)]
            continue
        rng = seeded_rng(seed, "voices", engine)
        names = [have[engine][i] for i in rng.permutation(len(have[engine]))]
        for i in range(int(count)):
            voices.append(tts.Voice(engine, names[i % len(names)], round(float(rng.uniform(*stretch)), 3),
                                    tape=round(float(rng.uniform(*tape)), 3)))
    if not voices:
        raise DatasetError(f"no TTS engine installed for negatives.engines {dict(engines)}: {tts.INSTALL_HINT}")
    if len({v.hash for v in voices}) != len(voices):
        raise ConfigError("negatives: two speakers came out the same; change negatives.seed")
    return voices


def deal_words(words: Sequence[str], n_voices: int, close: int, per_close: int, per_word: int,
               seed: int) -> list[list[str]]:
    """The words each voice says: the first ``close`` words by ``per_close`` voices each, the
    others by ``per_word``, dealt round-robin over a seeded order (every voice an equal share)."""
    order = seeded_rng(seed, "deal").permutation(n_voices)
    said: list[list[str]] = [[] for _ in range(n_voices)]
    slot = 0
    for i, word in enumerate(words):
        for _ in range(min(n_voices, per_close if i < close else per_word)):
            said[order[slot % n_voices]].append(word)
            slot += 1
    return said


# --- cut windows ---------------------------------------------------------------------------------
def cut_label(shares: Sequence[tuple[str, float]], keyword_min: float, unknown_max: float) -> str | None:
    """The label of a window from ``(word, share of its speech inside)``: a keyword with at least
    ``keyword_min`` inside (and no other keyword over ``unknown_max``) is that keyword; every keyword
    under ``unknown_max`` is ``_unknown_``; anything between is left out (None)."""
    inside = [(w, s) for w, s in shares if w in KEYWORDS and s >= unknown_max]
    if not inside:
        return UNKNOWN
    if len(inside) == 1 and inside[0][1] >= keyword_min:
        return inside[0][0]
    return None


def _window(takes: Sequence[np.ndarray], gap: int, start: int) -> tuple[np.ndarray, list[float], int]:
    """``takes`` one after another (``gap`` samples apart), the window from ``start`` (samples from
    the first take's onset; negative: before it), the share of each take inside it and how many
    samples of speech are inside."""
    spans, pos = [], 0
    for take in takes:
        spans.append((pos, pos + len(take)))
        pos += len(take) + gap
    lo = min(0, start)
    line = np.zeros(max(pos, start + CLIP_SAMPLES) - lo, np.float32)
    for (a, b), take in zip(spans, takes):
        line[a - lo : b - lo] = take
    inside = [max(0, min(b, start + CLIP_SAMPLES) - max(a, start)) for a, b in spans]
    shares = [n / (b - a) for n, (a, b) in zip(inside, spans)]
    return line[start - lo : start - lo + CLIP_SAMPLES], shares, sum(inside)


def _cut(rng: np.random.Generator, kind: str, said: dict[str, list[np.ndarray]], cfg: dict):
    """One cut window of ``kind`` from the voice's takes: (window, words, shares, speech samples)."""
    keywords = [w for w in said if w in KEYWORDS]
    others = [w for w in said if w not in KEYWORDS]
    keywords, others = keywords or others, others or keywords  # a voice that left one kind silent
    pick = lambda pool: pool[int(rng.integers(len(pool)))]  # noqa: E731
    if kind == "junction":
        words = [pick(keywords if rng.random() < 0.5 else others), pick(keywords + others)]
        takes = [said[w][int(rng.integers(len(said[w])))] for w in words]
        gap = int(rng.uniform(*cfg["gap_s"]) * SAMPLE_RATE)
        end = len(takes[0])  # the window holds the end of the first and the start of the second
        start = int(rng.integers(end + gap - CLIP_SAMPLES + 1, end))
        return (*_window(takes, gap, start), words)
    word = pick(keywords if kind == "edge" else others)
    take = said[word][int(rng.integers(len(said[word])))]
    lo, hi = cfg["unknown_max"], cfg["keyword_min"]
    # a keyword: as much under unknown_max as over keyword_min (a sliver of "yes" is _unknown_)
    share = (rng.uniform(lo / 2, lo) if rng.random() < 0.5 else rng.uniform(hi, 0.97)) if kind == "edge" \
        else rng.uniform(0.25, 0.75)
    inside = int(share * len(take))
    start = len(take) - inside if rng.random() < 0.5 else inside - CLIP_SAMPLES  # its end, or its start
    return (*_window([take], 0, start), [word])


# --- one voice (a worker's job) ------------------------------------------------------------------
_CHAIN: Any = None


def _init_worker(ir_dir: str, noise_dir: str, augment: dict) -> None:
    global _CHAIN
    _CHAIN = augmentation_chain(Path(ir_dir), Path(noise_dir), augment)


def augmentation_chain(ir_dir: Path, noise_dir: Path, a: dict):
    """Room, noise, microphone, level: one audiomentations chain, in the order sound meets them
    (the level is set on the coloured signal, so a narrow band-pass does not leave a whisper)."""
    from audiomentations import (
        AddBackgroundNoise, ApplyImpulseResponse, BandPassFilter, ClippingDistortion, Compose, Gain,
        Normalize, OneOf, SevenBandParametricEQ,
    )

    return Compose([
        ApplyImpulseResponse(ir_path=ir_dir, p=a["reverb_probability"], leave_length_unchanged=True),
        AddBackgroundNoise(sounds_path=noise_dir, min_snr_db=a["snr_db"][0], max_snr_db=a["snr_db"][1],
                           p=a["noise_probability"]),
        OneOf([BandPassFilter(min_center_freq=400.0, max_center_freq=2500.0, min_bandwidth_fraction=1.0, p=1.0),
               SevenBandParametricEQ(min_gain_db=-9.0, max_gain_db=9.0, p=1.0)], p=a["colour_probability"]),
        Normalize(p=1.0),
        Gain(min_gain_db=a["gain_db"][0], max_gain_db=a["gain_db"][1], p=1.0),
        ClippingDistortion(min_percentile_threshold=0, max_percentile_threshold=20, p=a["clipping_probability"]),
    ])


def _augment(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    peak = float(np.max(np.abs(window)))
    window = window * np.float32(_PEAK / peak) if peak > 0 else window
    seed = int(rng.integers(2**32))
    random.seed(seed)  # audiomentations draws from the global generators: seeded per clip
    np.random.seed(seed)
    out = _CHAIN(samples=window.astype(np.float32), sample_rate=SAMPLE_RATE)
    return np.round(np.clip(out, -1.0, 1.0) * 32767.0).astype(np.int16)


def _placed(take: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    take = take[:CLIP_SAMPLES]
    clip = np.zeros(CLIP_SAMPLES, np.float32)
    offset = int(rng.integers(CLIP_SAMPLES - len(take) + 1))
    clip[offset : offset + len(take)] = take
    return clip


def render_voice(dest: str, voice: tts.Voice, words: list[str], keyword_takes: int, seed: int,
                 speed_jitter: float, cuts: dict) -> tuple[int, list[list]]:
    """Write one voice's whole words, keywords and cut windows; returns (clips, manifest rows)."""
    rng = seeded_rng(seed, voice.hash, "takes")
    script = words + [k for k in KEYWORDS for _ in range(keyword_takes)]
    speeds = [float(s) for s in rng.uniform(1 - speed_jitter, 1 + speed_jitter, len(script))]
    with tempfile.TemporaryDirectory(prefix="kws-tts-") as work:
        takes = tts.speak(voice, script, speeds, Path(work))
    said: dict[str, list[np.ndarray]] = {}
    rows, n_in = [], {}
    for word, take in zip(script, takes):
        if take is None:
            continue
        said.setdefault(word, []).append(take)
        n = n_in[word] = n_in.get(word, -1) + 1
        rel = f"{word}/{voice.hash}_nohash_{n}.wav"
        write_pcm16(Path(dest) / rel, _augment(_placed(take, seeded_rng(seed, voice.hash, rel)), rng))
        rows.append([rel, voice.engine, voice.name, "word", word, "1", word if word in KEYWORDS else UNKNOWN])
    for i in range(int(cuts["per_voice"]) if said else 0):
        crng = seeded_rng(seed, voice.hash, "cut", i)
        kind = _CUT_KINDS[i % len(_CUT_KINDS)]
        for _attempt in range(20):  # a junction may land between the labels: draw it again
            window, shares, speech, names = _cut(crng, kind, said, cuts)
            label = cut_label(list(zip(names, shares)), cuts["keyword_min"], cuts["unknown_max"])
            if label is not None and speech >= cuts["min_speech_s"] * SAMPLE_RATE:  # else nearly silence
                break
        else:
            continue
        folder = label if label in KEYWORDS else UNKNOWN_CUTS
        rel = f"{folder}/{voice.hash}_nohash_{'cut' if label in KEYWORDS else ''}{i}.wav"
        write_pcm16(Path(dest) / rel, _augment(window, crng))
        rows.append([rel, voice.engine, voice.name, kind, "+".join(names), "+".join(f"{s:.2f}" for s in shares), label])
    return len(rows), rows


# --- the room: impulse responses -----------------------------------------------------------------
def impulse_responses(dest: Path, count: int, rt60_s: Sequence[float], seed: int) -> list[Path]:
    """``count`` seeded room impulse responses for ApplyImpulseResponse: the direct sound, then
    a diffuse tail of noise decaying by 60 dB in a random RT60 and a random direct-to-reverberant ratio."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(int(count)):
        rng = seeded_rng(seed, "room", i)
        rt60 = float(rng.uniform(*rt60_s))
        n = int(rt60 * SAMPLE_RATE)
        tail = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)  # exp(-6.9) = -60 dB
        ir = np.zeros(n + int(rng.integers(40, 400)), np.float64)  # 2.5-25 ms until the first reflections
        ir[len(ir) - n :] = tail * 10 ** (-float(rng.uniform(0.0, 12.0)) / 20) / np.sqrt(np.sum(tail**2))
        ir[0] = 1.0
        ir /= np.max(np.abs(ir))
        path = dest / f"room_{i:02d}.wav"
        write_pcm16(path, np.round(ir * 32767.0).astype(np.int16))
        out.append(path)
    return out


# --- settings --------------------------------------------------------------------------------------
_REQUIRED = ("seed", "vocabulary", "close_words", "voices_per_close_word", "voices_per_word", "engines",
             "stretch", "tape", "speed_jitter", "keyword_takes", "noise_dir", "augment", "cuts")
_AUGMENT = ("reverb_probability", "impulse_responses", "rt60_s", "noise_probability", "snr_db",
            "colour_probability", "gain_db", "clipping_probability")
_CUTS = ("per_voice", "keyword_min", "unknown_max", "gap_s", "min_speech_s")


def check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Raise :class:`ConfigError` unless ``settings`` are exactly :func:`generate`'s (from
    ``conf/negatives/default.yaml``). Returns them with the vocabulary's sha256 added: what the
    download stage records, so that an edited word list makes it generate again."""
    for where, keys, node in (("", _REQUIRED, settings), ("augment.", _AUGMENT, settings.get("augment")),
                              ("cuts.", _CUTS, settings.get("cuts"))):
        if not isinstance(node, dict):
            raise ConfigError(f"negatives.{where.rstrip('.')} must be a mapping (conf/negatives/default.yaml)")
        missing, unknown = sorted(set(keys) - node.keys()), sorted(node.keys() - set(keys))
        if missing or unknown:
            raise ConfigError(f"negatives settings {where or 'top level'}: missing {missing}, unknown {unknown}; "
                              "they come from conf/negatives/default.yaml (override `negatives.<key>=...`)")
    cuts = settings["cuts"]
    if not 0 < float(cuts["unknown_max"]) <= float(cuts["keyword_min"]) <= 1:
        raise ConfigError(f"negatives.cuts: need 0 < unknown_max <= keyword_min <= 1, got {cuts}")
    words = read_vocabulary(settings["vocabulary"])
    return {**settings, "vocabulary_sha256": hashlib.sha256("\n".join(words).encode()).hexdigest()}


# --- the top-level operation ---------------------------------------------------------------------
def generate(dest: Path, *, seed: int, vocabulary: str, close_words: int, voices_per_close_word: int,
             voices_per_word: int, engines: dict[str, int], stretch: Sequence[float], tape: Sequence[float],
             speed_jitter: float, keyword_takes: int, noise_dir: str | None, augment: dict, cuts: dict,
             vocabulary_sha256: str | None = None, workers: int = 0, progress: bool = True) -> dict[str, Any]:
    """Generate the negatives source into ``dest`` (created; must be empty). ``workers``: processes
    (0: all CPUs). Returns a summary. Raises :class:`DatasetError` or :class:`ConfigError`."""
    started = time.perf_counter()
    words = read_vocabulary(vocabulary)
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DatasetError(f"{dest} exists and is not an empty folder: choose a new destination")
    dest.mkdir(parents=True, exist_ok=True)
    voices = choose_voices(dict(engines), int(seed), stretch, tape)
    said = deal_words(words, len(voices), int(close_words), int(voices_per_close_word), int(voices_per_word), int(seed))
    for folder in {*words, *KEYWORDS, UNKNOWN_CUTS}:
        (dest / folder).mkdir()
    irs = impulse_responses(dest / IR_DIR, augment["impulse_responses"], augment["rt60_s"], int(seed))
    noise, noise_source = prepare_noise(noise_dir, dest / BACKGROUND_NOISE_DIR, int(seed))
    jobs = [(str(dest), v, said[i], int(keyword_takes), int(seed), float(speed_jitter), dict(cuts))
            for i, v in enumerate(voices)]
    total = sum(len(j[2]) + len(KEYWORDS) * int(keyword_takes) + int(cuts["per_voice"]) for j in jobs)
    n_workers = max(1, min((os.cpu_count() or 1) if int(workers) <= 0 else int(workers), len(jobs)))
    log.info("negatives: %d words, %d keywords, %d speakers (%s), about %d clips, %d workers",
             len(words), len(KEYWORDS), len(voices), ", ".join(sorted({v.engine for v in voices})), total, n_workers)
    results = run_parallel(render_voice, jobs, total=total, n_workers=n_workers, initializer=_init_worker,
                           initargs=(str(dest / IR_DIR), str(dest / BACKGROUND_NOISE_DIR), dict(augment)),
                           progress=progress, desc="negatives")
    rows = [row for _, voice_rows in results for row in voice_rows]
    with open(dest / MANIFEST, "w", newline="") as f:
        csv.writer(f).writerows([["path", "engine", "voice", "kind", "words", "share", "label"], *rows])
    for folder in dest.iterdir():  # a word nobody was dealt (more words than voices x shares)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    labels = [r[6] for r in rows]
    summary = {
        "name": NAME, "synthetic": True, "training_only": True, "seed": int(seed), "clips": len(rows),
        "words": len(words), "speakers": len(voices),
        "engines": {e: sum(v.engine == e for v in voices) for e in sorted({v.engine for v in voices})},
        "keyword_clips": sum(lab in KEYWORDS for lab in labels), "unknown_clips": labels.count(UNKNOWN),
        "cut_windows": sum(r[3] != "word" for r in rows), "impulse_responses": len(irs),
        "noise_files": [p.name for p in noise], "noise_source": noise_source,
        "voices": [{"hash": v.hash, "engine": v.engine, "name": v.name, "speed": v.speed, "pitch": v.pitch,
                    "tape": v.tape} for v in voices],
    }
    (dest / "README.md").write_text(_readme(summary))
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary["workers"] = n_workers
    log.info("negatives: %d clips (%d keyword, %d unknown; %d cut windows) in %.1f s at %s", len(rows),
             summary["keyword_clips"], summary["unknown_clips"], summary["cut_windows"], summary["seconds"], dest)
    return summary


def _readme(s: dict[str, Any]) -> str:
    lines = [
        "# SYNTHETIC negatives — training only", "",
        "Generated by `kws.negatives` (the download stage, `source: negatives` in `data.extra`): TTS",
        "speech of other words and of the keywords, and cut windows, through reverberation, noise,",
        "microphone colouring, gain and clipping. No human speech. Never use it for validation or test.",
        "`manifest.csv` says what each clip is.", "",
        f"- seed {s['seed']}; {s['words']} words; {s['speakers']} speakers: "
        + ", ".join(f"{e} {n}" for e, n in s["engines"].items()),
        f"- clips {s['clips']}: keyword {s['keyword_clips']}, unknown {s['unknown_clips']}, "
        f"cut windows {s['cut_windows']}; background noise {s['noise_source']}", "",
        "| speaker | engine | voice | speed | pitch | tape |", "|---|---|---|---|---|---|",
    ]
    lines += [f"| {v['hash']} | {v['engine']} | {v['name']} | {v['speed']:g} | {v['pitch']} | {v['tape']:g} |"
              for v in s["voices"]]
    return "\n".join(lines) + "\n"
