"""The text-to-speech engines Debian packages, behind one interface: espeak-ng, flite, festival.

A :class:`Voice` is one engine voice with its own speed (and, for espeak-ng, pitch) and a
"tape" factor (:func:`kws.audio.change_speed`: pitch and tempo together), so that the two
engines without a pitch setting still give speakers of different heights. :func:`speak`
renders a list of words with one voice: espeak-ng and flite one process per word, festival
one process for the whole list (its start-up costs more than a word). Every take is cleaned
the same way (:func:`kws.synthetic.clean_take`: 16 kHz, silence trimmed, ends faded).
Only English voices are used; flite's limited-domain voices (they speak only the time) are not.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from kws.audio import change_speed
from kws.errors import DatasetError
from kws.synthetic import clean_take, english_voices, find_espeak, synthesize, voice_variants

log = logging.getLogger(__name__)

ESPEAK, FLITE, FESTIVAL = "espeak-ng", "flite", "festival"
ENGINES = (ESPEAK, FLITE, FESTIVAL)
INSTALL_HINT = "apt-get install espeak-ng flite festival festvox-kallpc16k (scripts/setup.sh installs them)"

# flite voices that only speak a limited domain (awb_time: the time of day).
_FLITE_LIMITED = re.compile(r"_time$")
_TIMEOUT_S = 120


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker of one engine."""

    engine: str
    name: str  # espeak-ng -v spec ("en-gb+m3"), flite -voice name, festival voice name
    speed: float  # espeak-ng: words per minute; flite, festival: duration stretch (> 1 slower)
    pitch: int = 50  # espeak-ng -p (0-99); the other engines have none
    tape: float = 1.0  # change_speed factor after synthesis (> 1: higher and faster)

    @property
    def hash(self) -> str:
        """A stable 8-hex-char speaker id (the clip names' ``<speaker>_nohash_`` part)."""
        spec = f"{self.engine}|{self.name}|s{self.speed:g}|p{self.pitch}|t{self.tape:g}"
        return hashlib.sha1(spec.encode()).hexdigest()[:8]


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DatasetError(f"cannot run {cmd[0]} ({what}): {err}; {INSTALL_HINT}") from None
    if proc.returncode != 0:
        raise DatasetError(f"{cmd[0]} failed ({what}): {proc.stderr.decode(errors='replace').strip()[-300:]}")
    return proc


# --- what is installed ---------------------------------------------------------------------
def flite_voices() -> list[str]:
    """flite's built-in voices (``flite -lv``), limited-domain ones left out; [] without flite."""
    flite = shutil.which(FLITE)
    if flite is None:
        return []
    out = _run([flite, "-lv"], "listing voices").stdout.decode(errors="replace")
    names = out.split(":", 1)[-1].split()
    return sorted(n for n in names if not _FLITE_LIMITED.search(n))


def festival_voices() -> list[str]:
    """festival's installed English voices; [] without festival."""
    festival = shutil.which(FESTIVAL)
    if festival is None:
        return []
    query = ("(mapcar (lambda (v) (print (list v (cadr (assoc 'language (cadr (voice.description v)))))))"
             " (voice.list))")
    proc = _run([festival, "--batch", query], "listing voices")
    pairs = re.findall(r"\((\S+) (\S+)\)", proc.stdout.decode(errors="replace"))
    return sorted(name for name, language in pairs if language == "english")


@functools.lru_cache(maxsize=1)  # what is installed does not change while a process runs
def espeak_voices() -> tuple[list[str], list[str]]:
    """espeak-ng's English accents and voice variants; ([], []) without espeak-ng."""
    if shutil.which(ESPEAK) is None:
        return [], []
    espeak = find_espeak()
    return english_voices(espeak), voice_variants(espeak)


@functools.lru_cache(maxsize=1)
def installed() -> dict[str, list[str]]:
    """Engine -> its usable voice names (espeak-ng: its accents), for the engines installed."""
    accents, _ = espeak_voices()
    found = {ESPEAK: accents, FLITE: flite_voices(), FESTIVAL: festival_voices()}
    return {engine: names for engine, names in found.items() if names}


# --- speaking ------------------------------------------------------------------------------
def _read(path: Path) -> tuple[np.ndarray, int]:
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1), rate


def _espeak(voice: Voice, words: Sequence[str], speeds: Sequence[float], _work: Path) -> list:
    espeak = find_espeak()
    out = []
    for word, speed in zip(words, speeds):
        try:
            out.append(synthesize(espeak, word, voice.name, voice.pitch, int(round(voice.speed * speed))))
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as err:
            raise DatasetError(f"espeak-ng failed (voice {voice.name}, word {word!r}): {err}") from None
    return out


def _flite(voice: Voice, words: Sequence[str], speeds: Sequence[float], work: Path) -> list:
    out = []
    for i, (word, speed) in enumerate(zip(words, speeds)):
        path = work / f"{i}.wav"
        _run([FLITE, "-voice", voice.name, "--setf", f"duration_stretch={voice.speed / speed:.3f}",
              "-t", word, "-o", str(path)], f"voice {voice.name}, word {word!r}")
        out.append(_read(path))
    return out


def _festival(voice: Voice, words: Sequence[str], speeds: Sequence[float], work: Path) -> list:
    # Parameters are set after the voice is chosen: choosing a voice resets them.
    lines = [f"(voice_{voice.name})"]
    for i, (word, speed) in enumerate(zip(words, speeds)):
        lines.append(f"(Parameter.set 'Duration_Stretch {voice.speed / speed:.3f})")
        lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{word}")) "{work / f"{i}.wav"}" \'riff)')
    script = work / "say.scm"
    script.write_text("\n".join(lines) + "\n")
    _run([FESTIVAL, "--batch", str(script)], f"voice {voice.name}, {len(words)} words")
    return [_read(work / f"{i}.wav") for i in range(len(words))]


_SPEAK = {ESPEAK: _espeak, FLITE: _flite, FESTIVAL: _festival}


def speak(voice: Voice, words: Sequence[str], speeds: Sequence[float], work: Path) -> list[np.ndarray | None]:
    """Each of ``words`` said by ``voice`` at ``speeds`` (factors of its speed), as cleaned 16 kHz
    takes; None (and a warning) for a word the voice left silent. ``work``: an empty scratch folder.
    Raises :class:`DatasetError` when the engine fails."""
    takes: list[np.ndarray | None] = []
    for word, (raw, rate) in zip(words, _SPEAK[voice.engine](voice, words, speeds, work)):
        take = clean_take(raw, rate)
        if take is None:
            log.warning("%s voice %r (speaker %s) said nothing audible for %r: left out",
                        voice.engine, voice.name, voice.hash, word)
        elif voice.tape != 1.0:
            take = change_speed(take, voice.tape)
        takes.append(take)
    return takes
