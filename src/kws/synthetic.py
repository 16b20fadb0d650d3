"""An OFFLINE, SYNTHETIC stand-in for Google Speech Commands v0.02, in the archive's exact layout.

Nothing here reaches the real dataset. ``espeak-ng`` voices speak the 35 words; each
"speaker" is one espeak-ng English voice/accent combined with a voice variant
(``+m3``, ``+f2``, ``+croak``, ...) and a base pitch and speed, all chosen
deterministically from ``seed``. Each take is resampled to 16 kHz, trimmed, given a
random gain and position inside the 1 s window and mixed with a random 1 s segment of
background noise at a random SNR::

    <dest>/<word>/<speakerhash>_nohash_<n>.wav   16 kHz mono 16-bit PCM, 16000 samples
    <dest>/_background_noise_/*.wav              copied from noise_dir, else generated
    <dest>/validation_list.txt, testing_list.txt split by speaker (voice)
    <dest>/README.md                             says this is SYNTHETIC speech

Every random draw comes from a generator seeded by (seed, speaker, word, take), never
from global state, so the same arguments give byte-identical files whatever the number
of worker processes. Accuracy measured on this data is NOT Speech Commands accuracy.

Console entry point: ``kws-synth DEST [--voices N --takes N --seed S --noise-dir D --workers W]``;
what it is not told it takes from ``conf/synthetic/default.yaml``, as the pipeline does.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import soundfile as sf

from kws.audio import load_file, resample, snr_gain
from kws.cli import run_cli
from kws.config import CONF_DIR
from kws.errors import ConfigError, DatasetError
from kws.labels import ALL_WORDS, BACKGROUND_NOISE_DIR
from kws.workers import process_pool

log = logging.getLogger(__name__)

NAME = "synthetic_speech_commands"
SAMPLE_RATE = 16000
CLIP_SAMPLES = SAMPLE_RATE  # exactly 1 s, like every Speech Commands clip
NOISE_SECONDS = 60
INSTALL_HINT = "install espeak-ng (apt-get install espeak-ng)"

#: The settings' file under ``conf/``: the pipeline's (both data options interpolate it) and kws-synth's.
SETTINGS_FILE = Path("synthetic") / "default.yaml"

#: Voice variants worth using (those installed are intersected at run time); "" = none.
PREFERRED_VARIANTS = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "croak", "whisper", "klatt", "klatt2", "klatt3", "klatt4", "grandma", "grandpa",
)

# Per-speaker base and per-take jitter of espeak-ng's pitch (0-99) and speed (words/min).
_PITCH_BASE = (30, 70)
_SPEED_BASE = (140, 190)
_PITCH_JITTER = 6
_SPEED_JITTER = 12
_AMPLITUDE = 100  # espeak-ng -a; the random gain is applied afterwards
_GAIN_DB = (-20.0, -3.0)  # peak level of the speech before the noise is mixed in
_PEAK_LIMIT = 0.98
_TRIM_TOP_DB = 40.0
_FADE = 80  # samples (5 ms) of fade at the ends of a take
_WORD = re.compile(r"^[a-z][a-z'-]*$")
_ESPEAK_TIMEOUT_S = 60


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


# --- espeak-ng ------------------------------------------------------------------------
def find_espeak() -> str:
    """Path of the espeak-ng executable (looked up on PATH), else :class:`DatasetError`."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise DatasetError(f"espeak-ng was not found on PATH; the synthetic dataset needs it: {INSTALL_HINT}")
    return path


def _espeak_query(espeak: str, *args: str) -> str:
    try:
        proc = subprocess.run([espeak, *args], capture_output=True, timeout=_ESPEAK_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DatasetError(f"cannot run {espeak}: {err}; {INSTALL_HINT}") from None
    if proc.returncode != 0:
        raise DatasetError(f"`espeak-ng {' '.join(args)}` failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode("utf-8", errors="replace")


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
        raise DatasetError(f"espeak-ng lists no English voice (`espeak-ng --voices=en`); {INSTALL_HINT}")
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


# --- one clip -------------------------------------------------------------------------
def seeded_rng(seed: int, *parts: object) -> np.random.Generator:
    """A generator seeded by ``seed`` and ``parts`` only (stable, independent of call order)."""
    digest = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype="<u4").tolist())


def _fade(x: np.ndarray) -> np.ndarray:
    n = min(_FADE, len(x) // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x = x.copy()
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def clean_take(raw: np.ndarray, rate: int) -> np.ndarray | None:
    """A TTS engine's take at 16 kHz, its silence trimmed and its ends faded; None when it is
    (nearly) silent. Shared by every engine, so all their takes are cut the same way."""
    import librosa

    y = resample(raw, rate, SAMPLE_RATE)
    if y.size and float(np.max(np.abs(y))) > 1e-3:
        y, _ = librosa.effects.trim(y, top_db=_TRIM_TOP_DB, frame_length=512, hop_length=128)
        if y.size >= 160:  # at least 10 ms of sound
            return _fade(y.astype(np.float32))
    return None


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
        speech = _fade(speech[:CLIP_SAMPLES])
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
    if peak > _PEAK_LIMIT:
        clip = clip * np.float32(_PEAK_LIMIT / peak)
    return np.round(clip * 32767.0).astype(np.int16)


def write_pcm16(path: Path, samples: np.ndarray) -> None:
    sf.write(str(path), samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def clip_name(speaker: Speaker, take: int) -> str:
    return f"{speaker.hash}_nohash_{take}.wav"


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


# --- speakers, noise, splits ---------------------------------------------------------
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


def _pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    return np.fft.irfft(spectrum / np.sqrt(freqs), n)


def prepare_noise(noise_dir: str | Path | None, dest_noise: Path, seed: int) -> tuple[list[Path], str]:
    """Fill ``dest_noise`` with the recordings of ``noise_dir`` (converted to 16 kHz mono 16-bit
    when needed) or, when there are none, with generated white and pink noise."""
    dest_noise.mkdir(parents=True, exist_ok=True)
    sources = []
    if noise_dir is not None and str(noise_dir).strip():
        src_dir = Path(noise_dir).expanduser()  # relative paths resolve against the cwd
        if src_dir.is_dir():
            sources = sorted(p for p in src_dir.iterdir() if p.suffix.lower() == ".wav" and p.is_file())
    written = []
    for src in sources:
        out = dest_noise / src.name
        try:
            info = sf.info(str(src))
            if info.samplerate == SAMPLE_RATE and info.channels == 1 and info.subtype == "PCM_16":
                shutil.copyfile(src, out)
            else:
                samples = load_file(src, SAMPLE_RATE)
                peak = float(np.max(np.abs(samples), initial=0.0))
                if peak > 1.0:
                    samples = samples / peak
                write_pcm16(out, np.round(samples * 32767.0).astype(np.int16))
        except (sf.LibsndfileError, RuntimeError, ValueError) as err:
            log.warning("skipping background noise file %s: %s", src, err)
            out.unlink(missing_ok=True)
            continue
        written.append(out)
    if written:
        return written, f"copied from {noise_dir}"

    log.warning(
        "no background noise recordings in %s: generating white and pink noise instead "
        "(point noise_dir at Speech Commands' _background_noise_ for realistic noise)",
        noise_dir,
    )
    rng = seeded_rng(seed, "background_noise")
    n = NOISE_SECONDS * SAMPLE_RATE
    for name, signal in (("white_noise.wav", rng.standard_normal(n)), ("pink_noise.wav", _pink_noise(rng, n))):
        signal = signal * (0.1 / float(np.sqrt(np.mean(signal**2))))
        signal = np.clip(signal, -_PEAK_LIMIT, _PEAK_LIMIT)
        out = dest_noise / name
        write_pcm16(out, np.round(signal * 32767.0).astype(np.int16))
        written.append(out)
    return written, "generated (white and pink noise)"


def split_speakers(
    speakers: Sequence[Speaker], seed: int, validation_voices: int, testing_voices: int
) -> tuple[list[Speaker], list[Speaker]]:
    """The first ``validation_voices`` then ``testing_voices`` speakers in a seed-shuffled order."""
    order = [speakers[i] for i in seeded_rng(seed, "splits").permutation(len(speakers))]
    return order[:validation_voices], order[validation_voices : validation_voices + testing_voices]


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


def warm_up() -> None:
    """Import librosa and compile its kernels once, so that forked workers inherit them."""
    import librosa

    y = resample(np.sin(np.arange(2205, dtype=np.float32) * 0.1), 22050, SAMPLE_RATE)
    librosa.effects.trim(y, top_db=_TRIM_TOP_DB, frame_length=512, hop_length=128)


def _run_jobs(jobs: list[tuple], n_workers: int, noise_files: list[str], progress: bool) -> None:
    run_parallel(_render_word, jobs, total=sum(job[4] for job in jobs), n_workers=n_workers,
                 initializer=_init_worker, initargs=(noise_files,), progress=progress)


def run_parallel(
    func: Callable[..., int], jobs: Sequence[tuple], *, total: int, n_workers: int,
    initializer: Callable[..., None], initargs: tuple, progress: bool, desc: str = "synthesising",
) -> list[Any]:
    """``func(*job)`` for every job, in ``n_workers`` processes (1: this one), with a progress bar
    of ``total`` clips. ``func`` returns the clips it made (an int) or ``(clips, result)``; the
    results come back in job order. A worker's error is re-raised here, the queue cancelled."""
    from tqdm import tqdm

    def count(out: Any) -> int:
        return out[0] if isinstance(out, tuple) else out

    results: list[Any] = [None] * len(jobs)
    if n_workers == 1:
        initializer(*initargs)
        with tqdm(total=total, unit="clip", desc=desc, disable=not progress) as bar:
            for i, job in enumerate(jobs):
                results[i] = func(*job)
                bar.update(count(results[i]))
        return results

    warm_up()
    pool = process_pool(n_workers, initializer, initargs)
    try:
        futures = {pool.submit(func, *job): i for i, job in enumerate(jobs)}  # before tqdm starts a thread
        with tqdm(total=total, unit="clip", desc=desc, disable=not progress) as bar:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    results[futures[future]] = future.result()  # re-raises a worker's DatasetError
                    bar.update(count(results[futures[future]]))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


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
