"""Helpers of the live-listening tests: chunking and encoding audio, the offline reference."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from kws.serving.sessions import detector_settings
from kws.streaming.detector import StreamDetector

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


def offline_detections(pred, samples: np.ndarray, stride_s: float = 0.25,
                       threshold: float | None = None) -> list[tuple[str, float]]:
    """What the session must find: the long-audio scan's windows and scores of the WHOLE recording,
    fed to a fresh detector with the predictor's operating point -> ``(keyword, time_s)``."""
    starts, scores = pred.scan(np.asarray(samples, np.float32), stride_s)
    n = pred.cfg.clip_samples
    keep = starts * SR + n <= len(samples) + 1e-6  # a stream has no extra window aligned to its end
    found = StreamDetector(pred.labels, detector_settings(pred, threshold)).push_many(
        starts[keep] + pred.window_s / 2, scores[keep])
    return [(d.label, round(d.time_s, 3)) for d in found]


def word_end_s(path: Path, start_s: float, rel_db: float = -30.0) -> float:
    """Where the word of a real clip placed at ``start_s`` ends: the end of its last 10 ms frame
    within ``rel_db`` of the clip's loudest frame (the clip's trailing silence is not the word)."""
    from kws.audio import load_file

    clip = load_file(path, SR)
    hop = SR // 100
    frames = clip[: len(clip) // hop * hop].reshape(-1, hop)
    energy = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(energy >= energy.max() + rel_db)[0]
    return start_s + (loud[-1] + 1) * hop / SR
