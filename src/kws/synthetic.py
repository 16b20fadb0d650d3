"""An OFFLINE, SYNTHETIC stand-in for Google Speech Commands v0.02, in the archive's exact layout.

Nothing here reaches the real dataset. ``espeak-ng`` voices speak the 35 words; each
"speaker" is one espeak-ng English voice/accent combined with a voice variant
(``+m3``, ``+f2``, ``+croak``, ...) and a base pitch and speed, all chosen
deterministically from ``seed`` (:mod:`kws.speakers`). Each take is resampled to 16 kHz,
trimmed, given a random gain and position inside the 1 s window and mixed with a random 1 s
segment of background noise at a random SNR::

    <dest>/<word>/<speakerhash>_nohash_<n>.wav   16 kHz mono 16-bit PCM, 16000 samples
    <dest>/_background_noise_/*.wav              copied from noise_dir, else generated
    <dest>/validation_list.txt, testing_list.txt split by speaker (voice)
    <dest>/README.md                             says this is SYNTHETIC speech

Every random draw comes from a generator seeded by (seed, speaker, word, take), never
from global state, so the same arguments give byte-identical files whatever the number
of worker processes. Accuracy measured on this data is NOT Speech Commands accuracy.

This module is the generator (its settings, :func:`generate`) and its console entry point:
``kws-synth DEST [--voices N --takes N --seed S --noise-dir D --workers W]``;
what it is not told it takes from ``conf/synthetic/default.yaml``, as the pipeline does.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kws.audio import load_file
from kws.cli import run_cli
from kws.config import CONF_DIR
from kws.errors import ConfigError, DatasetError
from kws.labels import ALL_WORDS, BACKGROUND_NOISE_DIR
from kws.parallel import run_parallel
from kws.speakers import Speaker, choose_speakers, clip_name, render_clip, split_speakers
from kws.takes import SAMPLE_RATE, prepare_noise, write_pcm16
from kws.tts import english_voices, espeak_version, find_espeak, voice_variants

log = logging.getLogger(__name__)

NAME = "synthetic_speech_commands"

#: The settings' file under ``conf/``: the pipeline's (both data options interpolate it) and kws-synth's.
SETTINGS_FILE = Path("synthetic") / "default.yaml"

_WORD = re.compile(r"^[a-z][a-z'-]*$")


# --- worker processes ------------------------------------------------------------------
_NOISE: list[np.ndarray] = []


def _init_worker(noise_files: Sequence[str]) -> None:
    global _NOISE
    _NOISE = [load_file(p, SAMPLE_RATE) for p in noise_files]


def _render_word(
    dest: str, espeak: str, word: str, speaker: Speaker, takes: int, seed: int, snr_db: tuple[float, float]
) -> int:
    """Write all takes of ``word`` by ``speaker``; returns how many clips were written."""
    folder = Path(dest) / word
    folder.mkdir(exist_ok=True)
    for take in range(takes):
        samples = render_clip(espeak, word, speaker, take, seed, _NOISE, snr_db)
        write_pcm16(folder / clip_name(speaker, take), samples)
    return takes


# --- the README and the arguments -------------------------------------------------------
def _readme(summary: dict[str, Any], speakers: Sequence[Speaker], roles: dict[str, str]) -> str:
    lines = [
        "# SYNTHETIC speech — NOT Google Speech Commands",
        "",
        "This folder is a SYNTHETIC, offline stand-in for Google Speech Commands v0.02, generated",
        "by `kws.synthetic` (`kws-synth`) with the espeak-ng text-to-speech engine. It only mimics",
        "the archive's layout (`<word>/<speaker>_nohash_<n>.wav`, `_background_noise_/`,",
        "`validation_list.txt`, `testing_list.txt`). It contains NO human speech: every clip is",
        "espeak-ng speaking one word, mixed with background noise. Use it for tests and offline",
        "demos only; never report accuracy measured on it as Speech Commands accuracy.",
        "",
        f"- seed: {summary['seed']}",
        f"- espeak-ng: {summary['espeak_ng']}",
        f"- words: {summary['words']}, speakers (voices): {summary['speakers']}, "
        f"takes per voice: {summary['takes_per_voice']}, clips: {summary['clips']}",
        f"- validation clips: {summary['validation_clips']}, testing clips: {summary['testing_clips']}"
        " (split by speaker)",
        f"- SNR: {summary['snr_db'][0]:g} to {summary['snr_db'][1]:g} dB; background noise: "
        f"{summary['noise_source']}",
        "",
        "| speaker | espeak-ng voice | pitch | speed | split |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {s.hash} | {s.voice} | {s.pitch} | {s.speed} | {roles[s.hash]} |" for s in speakers]
    return "\n".join(lines) + "\n"


def _check_args(
    voices: int, takes_per_voice: int, snr_db: Any, validation_voices: int, testing_voices: int,
    words: Sequence[str],
) -> tuple[float, float]:
    if int(voices) < 1 or int(takes_per_voice) < 1:
        raise ConfigError(f"voices ({voices}) and takes_per_voice ({takes_per_voice}) must be at least 1")
    if int(validation_voices) < 0 or int(testing_voices) < 0:
        raise ConfigError("validation_voices and testing_voices must not be negative")
    if int(validation_voices) + int(testing_voices) >= int(voices):
        raise ConfigError(
            f"validation_voices ({validation_voices}) + testing_voices ({testing_voices}) must be "
            f"smaller than voices ({voices}) so that some speakers are left for training"
        )
    if isinstance(snr_db, (int, float)):
        snr_db = (snr_db, snr_db)
    try:
        lo, hi = (float(v) for v in snr_db)
    except (TypeError, ValueError):
        raise ConfigError(f"snr_db must be [low, high] in dB, got {snr_db!r}") from None
    if lo > hi:
        raise ConfigError(f"snr_db must be [low, high] with low <= high, got {snr_db!r}")
    if not words:
        raise ConfigError("words is empty")
    bad = [w for w in words if not isinstance(w, str) or not _WORD.match(w)]
    if bad or len(set(words)) != len(words):
        raise ConfigError(f"words must be distinct lower-case words, got {list(words)!r}")
    return lo, hi


# --- settings ------------------------------------------------------------------------------
def load_settings(conf_dir: str | Path = CONF_DIR) -> dict[str, Any]:
    """The settings in ``<conf_dir>/synthetic/default.yaml``: :func:`generate`'s keyword arguments."""
    from omegaconf import OmegaConf

    path = Path(conf_dir) / SETTINGS_FILE
    if not path.is_file():
        raise ConfigError(f"{path} not found: run kws-synth from the project root, or pass --conf")
    settings = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(settings, dict)
    check_settings(settings)
    return settings


def check_settings(settings: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` unless ``settings`` has exactly the settings :func:`generate`
    requires (a partial node, e.g. from ``++data.synthetic.voices=8``, fails here, not mid-run)."""
    required = {
        name for name, p in inspect.signature(generate).parameters.items()
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty
    }
    missing, unknown = sorted(required - settings.keys()), sorted(settings.keys() - required)
    if missing or unknown:
        raise ConfigError(
            f"synthetic settings: missing {missing}, unknown {unknown}; they come from "
            f"conf/{SETTINGS_FILE.as_posix()} (override one with `synthetic.<key>=...`)"
        )


# --- the top-level operation ----------------------------------------------------------
def generate(
    dest: Path,
    *,
    seed: int,
    voices: int,
    takes_per_voice: int,
    noise_dir: str | Path | None,
    snr_db: tuple[float, float] | list[float],
    validation_voices: int,
    testing_voices: int,
    words: Sequence[str] = ALL_WORDS,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate the synthetic dataset into ``dest`` (created; must be empty if it exists).

    ``workers``: processes (0 = ``os.cpu_count()``, 1 = this process). Returns a summary dict.
    Raises :class:`DatasetError` (espeak-ng missing or failing) or :class:`ConfigError`.
    """
    started = time.perf_counter()
    words = list(words)
    seed, voices, takes = int(seed), int(voices), int(takes_per_voice)
    snr = _check_args(voices, takes, snr_db, validation_voices, testing_voices, words)
    espeak = find_espeak()

    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DatasetError(f"{dest} exists and is not an empty folder: choose a new destination")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(f"cannot create {dest}: {err}") from None

    accents, variants = english_voices(espeak), voice_variants(espeak)
    speakers = choose_speakers(voices, seed, accents, variants)
    validation, testing = split_speakers(speakers, seed, int(validation_voices), int(testing_voices))
    roles = {s.hash: "train" for s in speakers}
    roles.update({s.hash: "validation" for s in validation})
    roles.update({s.hash: "testing" for s in testing})
    noise_files, noise_source = prepare_noise(noise_dir, dest / BACKGROUND_NOISE_DIR, seed)
    log.info(
        "synthesising %d clips (%d words x %d voices x %d takes) with espeak-ng voices %s",
        len(words) * voices * takes, len(words), voices, takes, ", ".join(accents),
    )

    jobs = [(str(dest), espeak, w, s, takes, seed, snr) for s in speakers for w in words]
    n_workers = (os.cpu_count() or 1) if int(workers) <= 0 else int(workers)
    n_workers = max(1, min(n_workers, len(jobs)))
    _run_jobs(jobs, n_workers, [str(p) for p in noise_files], progress)

    rel = {
        role: sorted(f"{w}/{clip_name(s, t)}" for s in group for w in words for t in range(takes))
        for role, group in (("validation", validation), ("testing", testing))
    }
    (dest / "validation_list.txt").write_text("".join(f"{p}\n" for p in rel["validation"]))
    (dest / "testing_list.txt").write_text("".join(f"{p}\n" for p in rel["testing"]))

    clips = len(jobs) * takes
    summary: dict[str, Any] = {
        "name": NAME,
        "synthetic": True,
        "clips": clips,
        "speakers": voices,
        "words": len(words),
        "takes_per_voice": takes,
        "validation_clips": len(rel["validation"]),
        "testing_clips": len(rel["testing"]),
        "training_clips": clips - len(rel["validation"]) - len(rel["testing"]),
        "seed": seed,
        "snr_db": list(snr),
        "noise_files": [p.name for p in noise_files],
        "noise_source": noise_source,
        "espeak_ng": espeak_version(espeak),
        "voices": [{**asdict(s), "split": roles[s.hash]} for s in speakers],
    }
    (dest / "README.md").write_text(_readme(summary, speakers, roles))
    elapsed = time.perf_counter() - started
    summary["seconds"] = round(elapsed, 2)
    summary["clips_per_second"] = round(clips / elapsed, 1) if elapsed > 0 else None
    summary["workers"] = n_workers
    log.info(
        "synthetic dataset: %d clips by %d voices in %.1f s (%.0f clips/s, %d workers) at %s",
        clips, voices, elapsed, clips / max(elapsed, 1e-9), n_workers, dest,
    )
    return summary



def _run_jobs(jobs: list[tuple], n_workers: int, noise_files: list[str], progress: bool) -> None:
    run_parallel(_render_word, jobs, total=sum(job[4] for job in jobs), n_workers=n_workers,
                 initializer=_init_worker, initargs=(noise_files,), progress=progress)


# --- console entry point ---------------------------------------------------------------
#: kws-synth's options that default to conf/synthetic/default.yaml: option name -> setting.
_FROM_SETTINGS = {
    "seed": "seed", "voices": "voices", "takes": "takes_per_voice", "noise_dir": "noise_dir",
    "snr_db": "snr_db", "validation_voices": "validation_voices", "testing_voices": "testing_voices",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kws-synth",
        description="Generate an OFFLINE SYNTHETIC (espeak-ng) stand-in for Speech Commands v0.02 "
        "in its exact layout. For tests and demos only: it is not Speech Commands. Options not "
        f"given default to <conf>/{SETTINGS_FILE.as_posix()}, the pipeline's settings.",
    )
    parser.add_argument("dest", help="destination folder (created; must be empty)")
    parser.add_argument("--conf", default=CONF_DIR, help="the configuration folder (default: %(default)s)")
    parser.add_argument("--voices", type=int, help="speakers")
    parser.add_argument("--takes", type=int, help="takes per word and voice")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--noise-dir", help="background noise recordings to copy and mix in; generated noise if missing")
    parser.add_argument("--snr-db", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="range of the signal-to-noise ratio in dB")
    parser.add_argument("--validation-voices", type=int)
    parser.add_argument("--testing-voices", type=int)
    parser.add_argument("--words", nargs="+", default=list(ALL_WORDS), help="words (default: all 35)")
    parser.add_argument("--workers", type=int, default=0, help="processes; 0 = all CPUs (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def cli_settings(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`generate`'s settings: the options given, the rest from ``args.conf``."""
    given = {key: getattr(args, opt) for opt, key in _FROM_SETTINGS.items() if getattr(args, opt) is not None}
    if len(given) == len(_FROM_SETTINGS):
        return given
    return {**load_settings(args.conf), **given}


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``kws-synth``."""
    args = _parser().parse_args(argv)

    def _run() -> None:
        summary = generate(
            Path(args.dest),
            **cli_settings(args),
            words=args.words,
            workers=args.workers,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
        print(
            f"{summary['clips']} SYNTHETIC clips ({summary['words']} words, {summary['speakers']} espeak-ng voices; "
            f"{summary['validation_clips']} validation, {summary['testing_clips']} testing) in {args.dest} "
            f"[{summary['clips_per_second']} clips/s]"
        )

    return run_cli(_run)


if __name__ == "__main__":
    raise SystemExit(main())
