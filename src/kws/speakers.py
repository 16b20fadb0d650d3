"""The synthetic source's speakers (:mod:`kws.synthetic`) and the clip of one take of one word.

A speaker is one espeak-ng English voice/accent combined with a voice variant (``+m3``,
``+f2``, ``+croak``, ...) and a base pitch and speed, all chosen deterministically from the
seed (:func:`choose_speakers`); the speakers are split between training, validation and
testing (:func:`split_speakers`). :func:`render_clip` jitters a take's pitch and speed, has
espeak-ng say the word, and gives the cleaned take a random gain and position inside the 1 s
window and a random 1 s segment of background noise at a random SNR.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from kws.audio import snr_gain
from kws.errors import DatasetError
from kws.takes import CLIP_SAMPLES, PEAK_LIMIT, clean_take, fade, seeded_rng
from kws.tts import synthesize

# Per-speaker base and per-take jitter of espeak-ng's pitch (0-99) and speed (words/min).
_PITCH_BASE = (30, 70)
_SPEED_BASE = (140, 190)
_PITCH_JITTER = 6
_SPEED_JITTER = 12
_GAIN_DB = (-20.0, -3.0)  # peak level of the speech before the noise is mixed in


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an espeak-ng voice spec and its stable 8-hex-char id."""

    hash: str
    voice: str  # argument of espeak-ng -v, e.g. "en-gb-x-rp+m3"
    pitch: int
    speed: int

    @property
    def spec(self) -> str:
        return f"{self.voice}|p{self.pitch}|s{self.speed}"


# --- speakers and splits ------------------------------------------------------------------
def choose_speakers(voices: int, seed: int, accents: Sequence[str], variants: Sequence[str]) -> list[Speaker]:
    """``voices`` distinct speakers: accents and variants interleaved in a seed-shuffled order,
    each with its own base pitch and speed. The hash depends on the voice spec only."""
    rng = seeded_rng(seed, "speakers")
    accents = [accents[i] for i in rng.permutation(len(accents))]
    variants = [variants[i] for i in rng.permutation(len(variants))]
    speakers: list[Speaker] = []
    used: set[str] = set()
    for i in range(voices):
        variant = variants[i % len(variants)]
        voice = accents[i % len(accents)] + (f"+{variant}" if variant else "")
        while True:
            pitch = int(rng.integers(_PITCH_BASE[0], _PITCH_BASE[1] + 1))
            speed = int(rng.integers(_SPEED_BASE[0], _SPEED_BASE[1] + 1))
            spec = f"{voice}|p{pitch}|s{speed}"
            digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
            if digest not in used:
                break
        used.add(digest)
        speakers.append(Speaker(hash=digest, voice=voice, pitch=pitch, speed=speed))
    return speakers


def split_speakers(
    speakers: Sequence[Speaker], seed: int, validation_voices: int, testing_voices: int
) -> tuple[list[Speaker], list[Speaker]]:
    """The first ``validation_voices`` then ``testing_voices`` speakers in a seed-shuffled order."""
    order = [speakers[i] for i in seeded_rng(seed, "splits").permutation(len(speakers))]
    return order[:validation_voices], order[validation_voices : validation_voices + testing_voices]


# --- one clip ------------------------------------------------------------------------------
def _speech(espeak: str, word: str, speaker: Speaker, pitch: int, speed: int, take: int) -> np.ndarray:
    """Synthesise, resample to 16 kHz and trim one take; retried once, then DatasetError."""
    error = "no sound"
    for _attempt in range(2):
        try:
            raw, rate = synthesize(espeak, word, speaker.voice, pitch, speed)
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as err:
            error = str(err)
            continue
        y = clean_take(raw, rate)
        if y is not None:
            return y
        error = "espeak-ng produced no audible sound"
    raise DatasetError(
        f"espeak-ng failed twice to synthesise the word {word!r} with voice {speaker.voice!r} "
        f"(speaker {speaker.hash}, take {take}, pitch {pitch}, speed {speed}): {error}"
    )


def render_clip(
    espeak: str, word: str, speaker: Speaker, take: int, seed: int,
    noise: Sequence[np.ndarray], snr_db: tuple[float, float],
) -> np.ndarray:
    """The 16-bit PCM samples (int16, exactly 16000) of one take."""
    rng = seeded_rng(seed, speaker.hash, word, take)
    pitch = int(np.clip(speaker.pitch + rng.integers(-_PITCH_JITTER, _PITCH_JITTER + 1), 0, 99))
    speed = int(np.clip(speaker.speed + rng.integers(-_SPEED_JITTER, _SPEED_JITTER + 1), 80, 450))
    gain_db = float(rng.uniform(*_GAIN_DB))
    place = float(rng.random())
    noise_pick = float(rng.random())
    noise_start = float(rng.random())
    snr = float(rng.uniform(*snr_db))

    speech = _speech(espeak, word, speaker, pitch, speed, take)
    if len(speech) > CLIP_SAMPLES:  # too long for the window: keep the onset
        speech = fade(speech[:CLIP_SAMPLES])
    speech = speech * np.float32(10 ** (gain_db / 20) / max(float(np.max(np.abs(speech))), 1e-9))
    offset = int(place * (CLIP_SAMPLES - len(speech) + 1))
    clip = np.zeros(CLIP_SAMPLES, dtype=np.float32)
    clip[offset : offset + len(speech)] = speech

    if noise:
        source = noise[min(int(noise_pick * len(noise)), len(noise) - 1)]
        if len(source) < CLIP_SAMPLES:
            source = np.resize(source, CLIP_SAMPLES)  # tile a short recording
        start = int(noise_start * (len(source) - CLIP_SAMPLES + 1))
        segment = source[start : start + CLIP_SAMPLES].astype(np.float32)
        # SNR against the speech itself, not the (mostly empty) 1 s window around it
        gain = snr_gain(float(np.mean(speech.astype(np.float64) ** 2)),
                        float(np.mean(segment.astype(np.float64) ** 2)), snr)
        if gain:
            clip = clip + segment * np.float32(gain)

    peak = float(np.max(np.abs(clip)))
    if peak > PEAK_LIMIT:
        clip = clip * np.float32(PEAK_LIMIT / peak)
    return np.round(clip * 32767.0).astype(np.int16)


def clip_name(speaker: Speaker, take: int) -> str:
    return f"{speaker.hash}_nohash_{take}.wav"
