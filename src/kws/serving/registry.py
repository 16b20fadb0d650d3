"""The process-wide predictors (one per configuration) and their live reload.

* :func:`get_predictor` returns the process-wide :class:`~kws.serving.predictor.Predictor` for a
  configuration — created ONCE (lock + double-checked), warmed up with a full inference (feature
  code and interpreter) before it is handed out. A failed load is remembered and retried at most
  every ``retry_s`` seconds, so a bundle mounted late is picked up without a restart.
  :func:`peek` tells the state without waiting; :func:`reset` forgets everything (tests).
* Live model updates: :func:`reload_if_changed` compares the bundle's fingerprint
  (:func:`~kws.serving.predictor.bundle_fingerprint`: folder identity, model file,
  ``model_info.json``) with the loaded one; when ``promote`` has swapped a new bundle in, the new
  predictor is loaded and warmed BESIDE the old one and then replaces it in one assignment.
  Requests that hold the old predictor finish on it; nothing fails. A bundle that is missing
  (mid-swap) or broken is not loaded; the old one keeps serving. A reload accepts only a bundle
  that loads with the CONFIGURED runtime (no fallback to the other one) and whose warm-up answers
  are sane (:meth:`~kws.serving.predictor.Predictor.check_answer`); a refused bundle is logged once.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

from kws.errors import BundleError, KWSError
from kws.serving.predictor import DEFAULT_TTA_SHIFTS_MS, Predictor, bundle_fingerprint

log = logging.getLogger(__name__)

_lock = threading.Lock()
_reload_lock = threading.Lock()
_rejected: dict[tuple, str] = {}  # key -> fingerprint of a bundle that failed to load (not retried)
_instances: dict[tuple, Predictor] = {}
_failures: dict[tuple, tuple[float, KWSError]] = {}
_loading: set[tuple] = set()


@lru_cache(maxsize=64)
def _canonical(model_dir: str) -> str:
    """One spelling per bundle folder, resolved once: every request looks its predictor up by it,
    and ``Path.resolve`` (a ``stat`` per path component) was a visible part of a request's
    time. A folder swapped in later at the same path is :func:`reload_if_changed`'s business."""
    return str(Path(model_dir).resolve())


def _key(model_dir: str | Path, runtime: str, threads: int, long_audio_s: float, stride_s: float,
         detection_threshold: float, tta_shifts_ms: Sequence[float] = DEFAULT_TTA_SHIFTS_MS) -> tuple:
    return (_canonical(str(model_dir)), runtime, int(threads), float(long_audio_s), float(stride_s),
            float(detection_threshold), tuple(float(ms) for ms in tta_shifts_ms))


def get_predictor(model_dir: str | Path, runtime: str = "tflite", threads: int = 1, long_audio_s: float = 1.5,
                  stride_s: float = 0.25, detection_threshold: float = 0.6, retry_s: float = 5.0,
                  tta_shifts_ms: Sequence[float] = DEFAULT_TTA_SHIFTS_MS) -> Predictor:
    """The process-wide predictor for this configuration, loaded once (lock + double-checked).

    Raises the load error (a :class:`KWSError`, 503) when the bundle cannot be loaded; the
    load is retried after ``retry_s`` seconds.
    """
    key = _key(model_dir, runtime, threads, long_audio_s, stride_s, detection_threshold, tta_shifts_ms)
    inst = _instances.get(key)
    if inst is not None:  # fast path, no lock
        return inst
    with _lock:
        inst = _instances.get(key)
        if inst is not None:
            return inst
        failed = _failures.get(key)
        if failed and time.monotonic() - failed[0] < retry_s:
            raise failed[1]
        _loading.add(key)
        try:
            inst = Predictor(model_dir, runtime=runtime, threads=threads, long_audio_s=long_audio_s,
                             stride_s=stride_s, detection_threshold=detection_threshold, tta_shifts_ms=tta_shifts_ms)
        except KWSError as err:
            _failures[key] = (time.monotonic(), err)
            log.error("model bundle not loaded: %s", err.message)
            raise
        except Exception as err:  # noqa: BLE001 - any loader failure becomes a clean 503
            wrapped = BundleError(f"the model bundle at {model_dir} could not be loaded: {err}")
            _failures[key] = (time.monotonic(), wrapped)
            log.exception("model bundle not loaded")
            raise wrapped from None
        finally:
            _loading.discard(key)
        _failures.pop(key, None)
        _instances[key] = inst
        log.info("model %s v%s loaded from %s (%s runtime, %d labels) in %.2f s", inst.model_name,
                 inst.model_version, inst.meta.path, inst.runtime.name, len(inst.labels), inst.load_seconds)
        return inst


def peek(model_dir: str | Path, runtime: str = "tflite", threads: int = 1, long_audio_s: float = 1.5,
         stride_s: float = 0.25, detection_threshold: float = 0.6,
         tta_shifts_ms: Sequence[float] = DEFAULT_TTA_SHIFTS_MS) -> tuple[str, Predictor | KWSError | None]:
    """Non-blocking state: ``("ready", predictor)``, ``("loading", None)``, ``("failed", error)`` or ``("absent", None)``."""
    key = _key(model_dir, runtime, threads, long_audio_s, stride_s, detection_threshold, tta_shifts_ms)
    if key in _instances:
        return "ready", _instances[key]
    if key in _loading:
        return "loading", None
    if key in _failures:
        return "failed", _failures[key][1]
    return "absent", None


def reload_if_changed(model_dir: str | Path, runtime: str = "tflite", threads: int = 1, long_audio_s: float = 1.5,
                      stride_s: float = 0.25, detection_threshold: float = 0.6,
                      tta_shifts_ms: Sequence[float] = DEFAULT_TTA_SHIFTS_MS,
                      on_reject: Callable[[], None] | None = None) -> tuple[Predictor, Predictor] | None:
    """Swap in the bundle now at ``model_dir`` if it is not the loaded one: ``(old, new)``, else ``None``.

    Nothing happens before the first load (that is :func:`get_predictor`'s job), while the
    folder is absent or incomplete (``promote`` is mid-swap), or when this very bundle already
    failed to load (logged once, ``on_reject`` called once). The new predictor must load with
    ``runtime`` itself (no fallback: a broken ``model.tflite`` must not become a Keras model of
    three times the memory) and pass the warm-up answer check; it is built and warmed while the
    old one keeps serving, then replaces it atomically.
    """
    key = _key(model_dir, runtime, threads, long_audio_s, stride_s, detection_threshold, tta_shifts_ms)
    with _reload_lock:  # one reload at a time; readers never wait for it
        old = _instances.get(key)
        if old is None:
            return None
        fp = bundle_fingerprint(model_dir)
        if fp is None or fp == old.fingerprint or _rejected.get(key) == fp:
            return None
        try:
            new = Predictor(model_dir, runtime=runtime, threads=threads, long_audio_s=long_audio_s,
                            stride_s=stride_s, detection_threshold=detection_threshold, tta_shifts_ms=tta_shifts_ms,
                            fallback=False)
        except Exception as err:  # noqa: BLE001 - a bad bundle must never take the service down
            message = err.message if isinstance(err, KWSError) else f"{type(err).__name__}: {err}"
            if bundle_fingerprint(model_dir) == fp:  # not a swap in progress: this bundle is broken
                _rejected[key] = fp
                log.error("new model bundle at %s NOT loaded, still serving %s v%s (%s runtime): %s", model_dir,
                          old.model_name, old.model_version, old.runtime.name, message)
                if on_reject is not None:
                    on_reject()
            return None
        _rejected.pop(key, None)
        _instances[key] = new
        log.info("model reloaded: %s v%s -> %s v%s (%s, loaded and warmed in %.2f s)", old.model_name,
                 old.model_version, new.model_name, new.model_version, model_dir, new.load_seconds)
        return old, new


def reset() -> None:
    """Forget every loaded predictor (tests)."""
    with _lock:
        _instances.clear()
        _failures.clear()
        _rejected.clear()
        _canonical.cache_clear()
