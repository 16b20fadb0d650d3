"""The serving bundle: what the promote stage exports and the service loads.

Layout of a bundle directory (``serving/model/`` by default)::

    model.keras       Keras model: input (frames, n_coeffs, 1) float32 features (kws.features) -> softmax
    model.tflite      the same model converted to TFLite (float32)
    model_int8.tflite optional: int8 post-training quantization of it (float32 input and output),
                      calibrated on training features; model_info.json ``int8`` holds its export
                      check (both accuracies on held-out features, ``default``: within 0.5 points)
    labels.json       {"labels": [...]}  class names in output order
    features.json     kws.features.FeatureConfig.to_dict(): the exact feature parameters
    frontend.npz      optional: the front end's mel filterbank and window for them (kws.features
                      save_frontend), pinned by the service so that it needs no librosa import;
                      bundles without it compute them with librosa
    metrics.json      evaluation metrics of this model (may be {})
    model_info.json   {"name", "version", "alias", "run_id", "architecture", "created_at", ...}
    detector.json     optional: the streaming detector's operating point (kws.streaming.detector
                      DetectorSettings under "settings", chosen on validation streams by the `stream` stage)
    model_views.tflite, model_views_int8.tflite, views.json
                      optional: the shared-trunk multi-view model (kws.views): a short clip's test-time
                      shifts in one invoke; views.json holds the shifts it was built for and its check
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kws.atomic import replace_dir, staged_dir  # noqa: F401  (replace_dir re-exported)
from kws.errors import BundleError, ConfigError, ModelNotFoundError
from kws.features import FRONTEND_FILE, FeatureConfig, load_frontend, save_frontend

log = logging.getLogger(__name__)

KERAS_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
TFLITE_INT8_FILE = "model_int8.tflite"
#: The int8 model is the default runtime only when it loses at most this many accuracy points
#: against float32 on the export check's held-out features (what the field accepts for int8 KWS).
INT8_MAX_LOSS_POINTS = 0.5
#: How many training examples calibrate the int8 ranges (a few hundred suffice for activations).
INT8_REPRESENTATIVE = 300
LABELS_FILE = "labels.json"
FEATURES_FILE = "features.json"
METRICS_FILE = "metrics.json"
INFO_FILE = "model_info.json"
DETECTOR_FILE = "detector.json"
REQUIRED = (KERAS_FILE, TFLITE_FILE, LABELS_FILE, FEATURES_FILE)


@dataclass
class BundleMeta:
    path: Path
    labels: list[str]
    features: FeatureConfig
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    detector: dict[str, Any] = field(default_factory=dict)  # detector.json ({} when absent)
    views: dict[str, Any] = field(default_factory=dict)  # views.json ({} when absent, {"error": ...} when bad)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BundleError(f"model bundle file {path} is unreadable: {err}") from None


def read_meta(path: str | Path) -> BundleMeta:
    """Read and check a bundle's metadata (not the model weights)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelNotFoundError(
            f"no model bundle at {path}: run `dvc repro` (promote exports it) or set KWS_MODEL_DIR"
        )
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise BundleError(f"model bundle at {path} is incomplete, missing: {', '.join(missing)}")
    labels = _read_json(path / LABELS_FILE)
    labels = labels.get("labels") if isinstance(labels, dict) else labels
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise BundleError(f"{path / LABELS_FILE} must hold a non-empty list of class names")
    try:
        features = FeatureConfig.from_dict(_read_json(path / FEATURES_FILE))
    except (TypeError, ValueError) as err:
        raise BundleError(f"{path / FEATURES_FILE} is invalid: {err}") from None
    metrics = _read_json(path / METRICS_FILE) if (path / METRICS_FILE).is_file() else {}
    info = _read_json(path / INFO_FILE) if (path / INFO_FILE).is_file() else {}
    detector = _read_json(path / DETECTOR_FILE) if (path / DETECTOR_FILE).is_file() else {}
    if not isinstance(detector, dict):
        raise BundleError(f"{path / DETECTOR_FILE} must hold a JSON object")
    return BundleMeta(path=path, labels=labels, features=features, metrics=metrics, info=info, detector=detector,
                      views=_read_views(path))


def _read_views(path: Path) -> dict[str, Any]:
    """``views.json``, ``{}`` when absent; unreadable, ``{"error": why}``: the views model is an
    optional speed-up, so a bad one leaves the bundle served without it."""
    from kws.views import VIEWS_INFO_FILE

    if not (path / VIEWS_INFO_FILE).is_file():
        return {}
    try:
        views = _read_json(path / VIEWS_INFO_FILE)
    except BundleError as err:
        return {"error": err.message}
    return views if isinstance(views, dict) else {"error": f"{path / VIEWS_INFO_FILE} must hold a JSON object"}


def pin_frontend(meta: BundleMeta) -> bool:
    """Pin the bundle's ``frontend.npz`` for its features in this process (:func:`kws.features.load_frontend`);
    False where the bundle has none (librosa computes the arrays)."""
    path = meta.path / FRONTEND_FILE
    if not path.is_file():
        return False
    try:
        load_frontend(path, meta.features)
    except ConfigError as err:
        raise BundleError(f"model bundle file {err.message}: re-export the bundle or delete that file") from None
    return True


def to_tflite(model) -> bytes:
    """Convert a Keras model to a float32 TFLite flatbuffer."""
    import contextlib
    import io

    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with contextlib.redirect_stdout(io.StringIO()):  # Keras' export prints its whole signature
        return converter.convert()


def representative_sample(x: np.ndarray, n: int = INT8_REPRESENTATIVE, seed: int = 0) -> np.ndarray:
    """A fixed-seed random ``n`` of the feature rows ``x`` (a split is often ordered by class)."""
    x = np.asarray(x, np.float32)
    if len(x) > n:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))]
    return x if x.ndim == 4 else x[..., None]


def to_tflite_int8(model, representative: np.ndarray) -> bytes:
    """Convert a Keras model to an int8 TFLite flatbuffer (post-training quantization).

    Weights and activations are int8 (one scale per tensor), their ranges calibrated on ``representative`` (feature rows
    of the TRAINING split, ``(n, frames, n_coeffs[, 1])``; see :func:`representative_sample`).
    Input and output stay float32, so a runtime feeds and reads it exactly like the float32
    model. Raises :class:`BundleError` if an operation has no int8 kernel.
    """
    import contextlib
    import io

    import tensorflow as tf

    rows = representative_sample(representative, len(representative))
    if len(rows) == 0:
        raise BundleError("int8 quantization needs representative examples (none given)")

    def examples():
        for row in rows:
            yield [row[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = examples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    # One scale per tensor, not per output channel: with 128-channel layers the per-channel scales
    # and 64-bit zero points are a large part of the file, and on real speech the per-tensor model
    # was as accurate (benchmarks/results/speed.json).
    converter._experimental_disable_per_channel = True
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return converter.convert()
    except Exception as err:  # noqa: BLE001 - the converter raises many types
        raise BundleError(f"int8 quantization failed: {err}") from None


def tflite_scores(content: bytes, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Scores of a TFLite flatbuffer on feature rows ``x`` (``(n, frames, n_coeffs[, 1])``)."""
    from ai_edge_litert.interpreter import Interpreter

    x = np.asarray(x, np.float32)
    x = x if x.ndim == 4 else x[..., None]
    interp = Interpreter(model_content=content)
    inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    rows = []
    for i in range(0, len(x), batch):
        chunk = np.ascontiguousarray(x[i:i + batch])
        interp.resize_tensor_input(inp, chunk.shape)
        interp.allocate_tensors()
        interp.set_tensor(inp, chunk)
        interp.invoke()
        rows.append(interp.get_tensor(out).copy())
    return np.concatenate(rows)


def int8_check(float_model: bytes, int8_model: bytes, x: np.ndarray, y: np.ndarray, split: str = "validation",
               max_loss_points: float = INT8_MAX_LOSS_POINTS) -> dict[str, Any]:
    """Both TFLite models scored on held-out features: accuracies, sizes and ``default`` (int8 loses
    at most ``max_loss_points``): what ``model_info.json`` records as ``int8``."""
    y = np.asarray(y)
    if len(y) == 0:
        raise BundleError("the int8 export check needs held-out examples (none given)")
    acc = {name: float(np.mean(tflite_scores(content, x).argmax(axis=1) == y))
           for name, content in (("float32", float_model), ("int8", int8_model))}
    loss = 100.0 * (acc["float32"] - acc["int8"])
    return {"float32_accuracy": acc["float32"], "int8_accuracy": acc["int8"], "loss_points": round(loss, 3),
            "max_loss_points": max_loss_points, "default": bool(loss <= max_loss_points + 1e-9),
            "check_split": split, "check_examples": int(len(y)),
            "float32_bytes": len(float_model), "int8_bytes": len(int8_model),
            "size_ratio": round(len(float_model) / len(int8_model), 2)}


def write_bundle(
    out_dir: str | Path,
    model,
    labels: list[str],
    features: FeatureConfig,
    metrics: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
    detector: dict[str, Any] | None = None,
    representative: np.ndarray | None = None,
    check: tuple[np.ndarray, np.ndarray] | None = None,
    views_shifts_ms: Sequence[float] | None = None,
) -> Path:
    """Write a complete bundle atomically (see :func:`kws.atomic.staged_dir`).

    With ``representative`` (training feature rows) the bundle also gets ``model_int8.tflite``;
    with ``check`` (held-out ``(x, y)``) both TFLite models are scored and the result is
    ``model_info.json``'s ``int8`` (:func:`int8_check`), which decides the ``auto`` runtime.
    With ``views_shifts_ms`` (the service's test-time shifts) also the views model where the
    architecture allows it (:func:`kws.views.write_views`; int8 too when int8 is written).
    """
    info = dict(info or {})
    with staged_dir(out_dir) as tmp:
        model.save(tmp / KERAS_FILE)
        float_model = to_tflite(model)
        (tmp / TFLITE_FILE).write_bytes(float_model)
        if representative is not None:
            int8_model = to_tflite_int8(model, representative_sample(representative))
            (tmp / TFLITE_INT8_FILE).write_bytes(int8_model)
            info["int8"] = (int8_check(float_model, int8_model, *check) if check is not None else
                            {"default": False, "float32_bytes": len(float_model), "int8_bytes": len(int8_model)})
            log.info("int8 model: %s", info["int8"])
        if views_shifts_ms:
            from kws.views import write_views

            write_views(tmp, model, features, views_shifts_ms, representative, check)
        _write_json(tmp / LABELS_FILE, {"labels": list(labels)})
        _write_json(tmp / FEATURES_FILE, features.to_dict())
        save_frontend(tmp / FRONTEND_FILE, features)
        _write_json(tmp / METRICS_FILE, metrics or {})
        _write_json(tmp / INFO_FILE, info)
        if detector:
            _write_json(tmp / DETECTOR_FILE, detector)
    return out_dir


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
