"""Helpers of the live-listening tests: chunking and encoding audio, the offline reference."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from kws.serving.sessions import detector_settings
from kws.streaming.detector import DetectorSettings, StreamDetector

SR = 16000
L16 = f"audio/L16;rate={SR}"
OCTET = "application/octet-stream"


def quantized(samples: np.ndarray) -> np.ndarray:
    """The samples on the 16-bit grid, so that s16 and f32 chunks carry exactly the same values."""
    return (np.clip(np.round(np.asarray(samples, np.float64) * 32768), -32768, 32767) / 32768).astype(np.float32)


def to_s16(samples: np.ndarray, byteorder: str = "<") -> bytes:
    ints = np.clip(np.round(np.asarray(samples, np.float64) * 32768), -32768, 32767).astype(f"{byteorder}i2")
    return ints.tobytes()


def to_f32(samples: np.ndarray) -> bytes:
    return np.asarray(samples, "<f4").tobytes()


def chunks(samples: np.ndarray, ms: float = 200) -> Iterator[np.ndarray]:
    n = int(round(ms * SR / 1000))
    for i in range(0, len(samples), n):
        yield samples[i:i + n]


def encoded(chunk: np.ndarray, kind: str) -> tuple[bytes, str, str]:
    """``(body, Content-Type, query)`` of a chunk: kind ``l16`` (big-endian), ``s16`` or ``f32``."""
    if kind == "l16":
        return to_s16(chunk, ">"), L16, ""
    if kind == "s16":
        return to_s16(chunk), OCTET, "format=s16"
    return to_f32(chunk), OCTET, "format=f32"


def offline_detections(pred, samples: np.ndarray, stride_s: float = 0.125,
                       threshold: float | None = None) -> list[tuple[str, float]]:
    """What the session must find: the long-audio scan's windows and scores of the WHOLE recording,
    fed to a fresh detector with the predictor's operating point -> ``(keyword, time_s)``."""
    starts, scores = pred.scan(np.asarray(samples, np.float32), stride_s)
    n = pred.cfg.clip_samples
    keep = starts * SR + n <= len(samples) + 1e-6  # a stream has no extra window aligned to its end
    found = StreamDetector(pred.labels, detector_settings(pred, threshold)).push_many(
        starts[keep] + pred.window_s / 2, scores[keep])
    return [(d.label, round(d.time_s, 3)) for d in found]


def word_end_s(path: Path, start_s: float) -> float:
    """Where the word of a real clip placed at ``start_s`` ends (:func:`kws.audio.speech_end_s`)."""
    from kws.audio import load_file, speech_end_s

    return start_s + speech_end_s(load_file(path, SR), SR)


# --------------------------------------------------------------------------- a six-keyword talk
TALK_KEYWORDS = ("one", "two", "three", "four", "five", "six")
# The other digits that are no keyword's near miss, `_unknown_` to the model below. Not "nine" (one's
# rhyme) or "seven" (six's opening): a model trained in a minute takes "nine" for "one" at 0.98 in
# some training draws, and telling near misses apart is the served model's job, measured on the
# speaker folds (issue 18); this talk checks the live path.
TALK_OTHERS = ("eight", "zero")
TALK_ORDER = ("one", "two", "other-1", "three", "four", "other-2", "five", "six")
TALK_LABELS = ("_silence_", "_unknown_", *TALK_KEYWORDS)


# The talk bundle's operating point (its detector.json), as the stream stage would choose one for
# live listening (conf/stream: max_latency_s): the detector's default averages 0.5 s of windows and
# so knows a word up to ~0.34 s after its speech ends, which leaves too little of the page's 500 ms
# for the chunk, the request and the drawing; a 0.375 s average knows it within ~0.28 s and keeps
# the talk clean (no wrong or extra word at any of eight stream phases, for this model and three
# variants of it: other seeds, end-aligned keyword copies).
TALK_DETECTOR = DetectorSettings(average_window_s=0.375)


def talk_bundle(tmp_path_factory, sample: Path) -> Path:
    """The tiny real model of the serving tests, trained on six keywords of the real clips of
    ``sample`` and of ``speech_commands_real`` beside it (every other word is its `_unknown_`; the
    three clips a word has in ``sample`` alone teach it too little: a noisy clip of "two" made
    background noise pass for "two"), with :data:`TALK_DETECTOR` as its ``detector.json``; built
    once per test session."""
    from tests.support.bundles import build_tiny_bundle

    out = tmp_path_factory.getbasetemp() / "listen-talk-bundle" / "model"
    if not (out / "model.tflite").is_file():
        build_tiny_bundle(out, sample_dir=sample, labels=TALK_LABELS, copies=16, epochs=20, max_unknown_per_word=30,
                          clip_dirs=[sample, sample.parent / "speech_commands_real"],
                          detector={"settings": TALK_DETECTOR.to_dict()})
    return out


def speech_margin_db(path: Path) -> float:
    """How clearly a clip holds its word, from the signal alone: its loudest 10 ms frame over its
    noise floor (10th-percentile frame), in dB; a clip whose speech runs into its last 50 ms (a word
    cut off by the recording's end) ranks below every whole one."""
    from kws.audio import load_file

    clip = load_file(path, SR)
    hop = SR // 100
    frames = clip[: len(clip) // hop * hop].reshape(-1, hop)
    energy = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    cut_off = word_end_s(path, 0.0) > len(clip) / SR - 0.05
    return float(energy.max() - np.percentile(energy, 10)) - (1000.0 if cut_off else 0.0)


def talk_clips(sample: Path) -> dict[str, Path]:
    """The talk's clips by a fixed rule, never by what a model answers: for each word of
    :data:`TALK_KEYWORDS` and :data:`TALK_OTHERS`, its most clearly spoken clip in ``sample``
    (:func:`speech_margin_db`, ties by file name) — what a person speaking to the page gives, not a
    recording cut off mid-word or buried in its own noise.
    Returns ``{slot word: clip}`` with the other words under :data:`TALK_ORDER`'s placeholders."""
    first = {}
    for word in (*TALK_KEYWORDS, *TALK_OTHERS):
        paths = sorted((sample / word).glob("*.wav"))
        if not paths:
            raise FileNotFoundError(f"no clip of {word!r} under {sample}")
        first[word] = max(paths, key=speech_margin_db)
    return {**{w: first[w] for w in TALK_KEYWORDS}, TALK_ORDER[2]: first[TALK_OTHERS[0]],
            TALK_ORDER[5]: first[TALK_OTHERS[1]]}


def talk_recording(clips: dict[str, Path], sample: Path, first_s: float = 1.5, gap_s: float = 2.0,
                   tail_s: float = 2.5, noise_rms: float = 0.004) -> tuple[np.ndarray, list[tuple[float, str, Path]]]:
    """The words of :data:`TALK_ORDER` every ``gap_s`` seconds over a quiet pink-noise bed plus a
    real background recording (running tap); returns the samples and ``(start_s, word, clip)``."""
    from kws.audio import load_file
    from tests.support.bundles import long_recording

    placed = [(first_s + i * gap_s, word, clips[word]) for i, word in enumerate(TALK_ORDER)]
    duration = first_s + (len(placed) - 1) * gap_s + 1.0 + tail_s
    audio = long_recording([(t, p) for t, _, p in placed], duration_s=duration, sample_dir=sample,
                           noise_level=noise_rms / 2)
    tap = load_file(sample / "_background_noise_" / "running_tap.wav", SR)
    tap = np.tile(tap, int(np.ceil(len(audio) / len(tap))))[: len(audio)]
    audio = audio + tap / (np.sqrt(np.mean(tap ** 2)) + 1e-9) * noise_rms
    return quantized(np.clip(audio, -1, 1)), placed
