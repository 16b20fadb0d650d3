"""A tiny REAL serving bundle and audio made from the real clips (for the serving tests, kws-score's
tests and ``benchmarks/bench_serving.py``).

:func:`build_tiny_bundle` trains a SMALL REAL model on the real Speech Commands clips in
``../shared/data/speech_commands_sample`` (read in place, never copied) and writes a complete
serving bundle with :func:`kws.bundle.write_bundle` -- seconds on two cores.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .paths import SAMPLE_DIR

TINY_LABELS = ("_silence_", "_unknown_", "one", "two", "three")
SR = 16000


def _load(path: Path) -> np.ndarray:
    from kws.audio import load_file

    return load_file(path, SR)


def _noise_segment(noises: list[np.ndarray], rng: np.random.Generator, n: int) -> np.ndarray:
    noise = noises[rng.integers(len(noises))]
    start = rng.integers(0, len(noise) - n)
    seg = noise[start:start + n]
    return seg / (np.sqrt(np.mean(seg**2)) + 1e-9)


def _band_limit(x: np.ndarray, rate: int) -> np.ndarray:
    """What a recording made at ``rate`` Hz sounds like once resampled to 16 kHz."""
    from kws.audio import resample

    return resample(resample(x, SR, rate), rate, SR)[: len(x)]


def _augment(clip, noises, rng, max_shift: int, snr_db: tuple[float, float]) -> np.ndarray:
    from kws.audio import snr_gain, time_shift

    x = time_shift(clip, int(rng.integers(-max_shift, max_shift + 1))) * rng.uniform(0.5, 1.5)
    if rng.random() < 0.3:  # some copies as if recorded at 8 kHz (phones, old recorders)
        x = _band_limit(x, 8000)
    snr = rng.uniform(*snr_db)
    seg = _noise_segment(noises, rng, len(x))
    x = x + seg * snr_gain(float(np.mean(x**2)), float(np.mean(seg**2)), snr)
    return np.clip(x, -1, 1).astype(np.float32)


def tiny_dataset(
    sample_dir: Path = SAMPLE_DIR,
    labels: Sequence[str] = TINY_LABELS,
    copies: int = 24,
    seed: int = 0,
    clip_dirs: Sequence[Path] | None = None,
    max_unknown_per_word: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Waveforms ``(n, 16000)`` and label ids from the real clips, with shift/gain/noise copies.

    The clips are the word folders of ``clip_dirs`` (default: ``sample_dir`` alone); the noise is
    ``sample_dir``'s. ``_silence_`` = background-noise segments at random (mostly low) levels;
    ``_unknown_`` = the words that are not in ``labels`` (at most ``max_unknown_per_word`` clips
    of each, the first by name); every keyword clip gets ``copies`` augmented copies.
    """
    from kws.audio import fix_length
    from kws.labels import BACKGROUND_NOISE_DIR, SILENCE, UNKNOWN

    sample_dir = Path(sample_dir)
    rng = np.random.default_rng(seed)
    noises = [_load(p) for p in sorted((sample_dir / BACKGROUND_NOISE_DIR).glob("*.wav"))]
    if not noises:
        raise FileNotFoundError(f"no background noise recordings under {sample_dir / BACKGROUND_NOISE_DIR}")
    dirs = [Path(d) for d in clip_dirs] if clip_dirs is not None else [sample_dir]
    clips: dict[str, list[Path]] = {}
    for folder in dirs:
        for d in sorted(folder.iterdir()):
            if d.is_dir() and not d.name.startswith("_"):
                clips.setdefault(d.name, []).extend(sorted(d.glob("*.wav")))
    words = sorted(clips)
    keywords = [w for w in labels if w not in (SILENCE, UNKNOWN)]
    missing = [w for w in keywords if w not in words]
    if missing:
        raise FileNotFoundError(f"no clips for {missing} under {', '.join(map(str, dirs))}")
    waves, ys = [], []
    max_shift = SR // 5
    for word in words:
        paths = clips[word]
        if word in keywords:
            y, n_copies = labels.index(word), copies
        elif UNKNOWN in labels:
            y, n_copies = labels.index(UNKNOWN), max(2, copies // 4)
            paths = paths[:max_unknown_per_word]
        else:
            continue
        for path in paths:
            clip = fix_length(_load(path), SR)
            waves.append(clip)
            ys.append(y)
            for _ in range(n_copies):
                waves.append(_augment(clip, noises, rng, max_shift, (5.0, 30.0)))
                ys.append(y)
    if SILENCE in labels:
        n_silence = max(1, len(ys) // len(labels))
        for i in range(n_silence):
            level = 10 ** rng.uniform(-3.5, -0.7) if i % 4 else 10 ** rng.uniform(-5, -3)
            waves.append((_noise_segment(noises, rng, SR) * level).astype(np.float32))
            ys.append(labels.index(SILENCE))
    return np.stack(waves).astype(np.float32), np.asarray(ys, dtype=np.int64)


def build_tiny_bundle(
    out_dir: str | Path,
    sample_dir: str | Path = SAMPLE_DIR,
    labels: Sequence[str] = TINY_LABELS,
    epochs: int = 12,
    copies: int = 24,
    seed: int = 0,
    architecture: str = "cnn_seed",
    int8: bool = False,
    views: bool = False,
    clip_dirs: Sequence[Path] | None = None,
    max_unknown_per_word: int | None = None,
    detector: dict | None = None,
) -> Path:
    """Train a tiny real model on the real clips and write a complete serving bundle to ``out_dir``
    (with ``int8``: also ``model_int8.tflite``, calibrated and checked on the training clips; with
    ``views``: the views model of :mod:`kws.views` for the service's default shifts, where the
    architecture allows it; with ``detector``: that ``detector.json``, else none);
    ``clip_dirs``/``max_unknown_per_word``: see :func:`tiny_dataset`."""
    import keras

    from kws.bundle import write_bundle
    from kws.features import FeatureConfig, extract
    from kws.models import build_model

    labels = list(labels)
    cfg = FeatureConfig()
    waves, y = tiny_dataset(Path(sample_dir), labels, copies=copies, seed=seed, clip_dirs=clip_dirs,
                            max_unknown_per_word=max_unknown_per_word)
    x = extract(waves, cfg)
    keras.utils.set_random_seed(seed)
    model = build_model({"name": architecture, "dropout": 0.2, "l2": 1e-4}, cfg.shape, len(labels), x)
    for layer in model.layers:  # a few hundred steps only: let BatchNorm's moving statistics converge
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.8
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    hist = model.fit(x[..., None], y, epochs=epochs, batch_size=32, shuffle=True, verbose=0)
    seconds = time.perf_counter() - t0
    metrics = {"train_accuracy": float(hist.history["accuracy"][-1]), "train_examples": int(len(y))}
    info = {
        "name": "kws-tiny", "version": "test-1", "alias": "test", "run_id": None,
        "architecture": architecture, "dataset": "+".join(Path(d).name for d in (clip_dirs or [sample_dir])),
        "train_seconds": round(seconds, 2),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    extra = {"representative": x, "check": (x, y)} if int8 else {}
    if views:
        from kws.views import VIEW_SHIFTS_MS

        extra["views_shifts_ms"] = VIEW_SHIFTS_MS
    return Path(write_bundle(out_dir, model, labels, cfg, metrics=metrics, info=info, detector=detector, **extra))


def keyword_clips(sample_dir: str | Path = SAMPLE_DIR, labels: Sequence[str] = TINY_LABELS) -> dict[str, list[Path]]:
    """Real clip paths per keyword of ``labels`` (not silence/unknown)."""
    return {w: sorted((Path(sample_dir) / w).glob("*.wav")) for w in labels if not w.startswith("_")}


def wav_bytes(samples: np.ndarray, sample_rate: int = SR, subtype: str = "PCM_16") -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def long_recording(
    placements: Sequence[tuple[float, Path]],
    duration_s: float = 30.0,
    sample_dir: str | Path = SAMPLE_DIR,
    noise_level: float = 0.003,
    seed: int = 0,
) -> np.ndarray:
    """A recording of ``duration_s`` seconds: real clips placed at ``(start_s, path)`` on a low noise bed."""
    from kws.labels import BACKGROUND_NOISE_DIR

    rng = np.random.default_rng(seed)
    n = int(round(duration_s * SR))
    noise = _load(Path(sample_dir) / BACKGROUND_NOISE_DIR / "pink_noise.wav")
    reps = int(np.ceil(n / len(noise)))
    bed = np.tile(noise, reps)[:n]
    bed = bed / (np.sqrt(np.mean(bed**2)) + 1e-9) * noise_level
    out = bed.astype(np.float32) + rng.normal(0, noise_level / 10, n).astype(np.float32)
    for start_s, path in placements:
        clip = _load(path)
        i = int(round(start_s * SR))
        out[i:i + len(clip)] += clip[: max(0, n - i)]
    return np.clip(out, -1, 1).astype(np.float32)
