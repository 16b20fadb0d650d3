"""The text-to-speech engines Debian packages, behind one interface: espeak-ng, flite, festival.

A :class:`Voice` is one engine voice with its own speed (and, for espeak-ng, pitch) and a
"tape" factor (:func:`kws.audio.change_speed`: pitch and tempo together), so that the two
engines without a pitch setting still give speakers of different heights. :func:`speak`
renders a list of words with one voice: espeak-ng and flite one process per word, festival
one process for the whole list (its start-up costs more than a word). Every take is cleaned
the same way (:func:`kws.takes.clean_take`: 16 kHz, silence trimmed, ends faded).
Only English voices are used; flite's limited-domain voices (they speak only the time) are not.

This module is the one place that runs espeak-ng: its voices and variants, its version and one
word as samples (:func:`synthesize`) serve the synthetic source (:mod:`kws.speakers`) too.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import shutil
import subprocess
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from kws.audio import change_speed
from kws.errors import DatasetError
from kws.takes import clean_take

log = logging.getLogger(__name__)

ESPEAK, FLITE, FESTIVAL = "espeak-ng", "flite", "festival"
ENGINES = (ESPEAK, FLITE, FESTIVAL)
INSTALL_HINT = "apt-get install espeak-ng flite festival festvox-kallpc16k (scripts/setup.sh installs them)"

# flite voices that only speak a limited domain (awb_time: the time of day).
_FLITE_LIMITED = re.compile(r"_time$")
_TIMEOUT_S = 120

#: What :func:`find_espeak` and espeak-ng's queries tell to do when it is missing or broken.
ESPEAK_HINT = "install espeak-ng (apt-get install espeak-ng)"
#: espeak-ng voice variants worth using (those installed are intersected at run time); "" = none.
PREFERRED_VARIANTS = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "croak", "whisper", "klatt", "klatt2", "klatt3", "klatt4", "grandma", "grandpa",
)
_AMPLITUDE = 100  # espeak-ng -a; the sources give their takes a gain of their own afterwards
_ESPEAK_TIMEOUT_S = 60


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


# --- espeak-ng -----------------------------------------------------------------------------
def find_espeak() -> str:
    """Path of the espeak-ng executable (looked up on PATH), else :class:`DatasetError`."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise DatasetError(f"espeak-ng was not found on PATH; the synthetic dataset needs it: {ESPEAK_HINT}")
    return path


def _espeak_query(espeak: str, *args: str) -> str:
    try:
        proc = subprocess.run([espeak, *args], capture_output=True, timeout=_ESPEAK_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DatasetError(f"cannot run {espeak}: {err}; {ESPEAK_HINT}") from None
    if proc.returncode != 0:
        raise DatasetError(f"`espeak-ng {' '.join(args)}` failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode("utf-8", errors="replace")


def phonemes(words: Sequence[str], voice: str = "en-us") -> list[str]:
    """espeak-ng's phonemes of each word in ``voice`` (``-x``: one line per sentence), one query for all."""
    words = list(words)
    if not words:
        return []
    lines = [ln.strip() for ln in _espeak_query(find_espeak(), "-q", "-x", "-v", voice,
                                               "\n".join(f"{w}." for w in words)).splitlines() if ln.strip()]
    if len(lines) != len(words):
        raise DatasetError(f"espeak-ng gave {len(lines)} phoneme lines for {len(words)} words ({voice})")
    return [ln.replace(" ", "") for ln in lines]


def english_voices(espeak: str) -> list[str]:
    """The installed espeak-ng English voices (their language names), MBROLA voices excluded."""
    found = set()
    for line in _espeak_query(espeak, "--voices=en").splitlines()[1:]:
        cols = line.split()
        if len(cols) < 5:
            continue
        language, file = cols[1], cols[4]
        # MBROLA voices need separate voice data; "variant" lines are not voices.
        if language == "variant" or file.startswith("mb/") or not language.startswith("en"):
            continue
        found.add(language)
    if not found:
        raise DatasetError(f"espeak-ng lists no English voice (`espeak-ng --voices=en`); {ESPEAK_HINT}")
    return sorted(found)


def voice_variants(espeak: str) -> list[str]:
    """The installed voice variants among :data:`PREFERRED_VARIANTS` ("" = no variant)."""
    installed = set()
    for line in _espeak_query(espeak, "--voices=variant").splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5 and cols[4].startswith("!v/"):
            installed.add(cols[4][3:])
    return [v for v in PREFERRED_VARIANTS if v == "" or v in installed]


def espeak_version(espeak: str) -> str:
    try:
        out = _espeak_query(espeak, "--version").strip()
    except DatasetError:
        return "unknown"
    m = re.search(r"text-to-speech:\s*(\S+)", out)
    return m.group(1) if m else out.splitlines()[0] if out else "unknown"


def _parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Samples (float32) and rate of espeak-ng's streamed 16-bit WAV (its sizes are bogus)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("espeak-ng did not write a WAV stream")
    pos, rate, bits = 12, 0, 0
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if chunk == b"fmt ":
            _fmt, channels, rate, _byte_rate, _align, bits = struct.unpack("<HHIIHH", data[body : body + 16])
            if channels != 1 or bits != 16:
                raise ValueError(f"unexpected espeak-ng output: {channels} channels, {bits} bits")
        elif chunk == b"data":
            if not rate:
                raise ValueError("WAV data before its fmt chunk")
            pcm = data[body:]
            pcm = pcm[: len(pcm) // 2 * 2]
            return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0, rate
        pos = body + size + (size & 1)
    raise ValueError("no audio data in espeak-ng's output")


def synthesize(espeak: str, word: str, voice: str, pitch: int, speed: int) -> tuple[np.ndarray, int]:
    """One espeak-ng rendition of ``word``: (float32 samples, sample rate). Raises on failure."""
    cmd = [espeak, "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(_AMPLITUDE), "--stdout", word]
    proc = subprocess.run(cmd, capture_output=True, timeout=_ESPEAK_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode}: {proc.stderr.decode(errors='replace').strip()}")
    return _parse_wav(proc.stdout)


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
