"""The serving bundle: what the promote stage exports and the service loads.

Layout of a bundle directory (``serving/model/`` by default)::

    model.keras       Keras model: input (frames, n_coeffs, 1) float32 features (kws.features) -> softmax
    model.tflite      the same model converted to TFLite (float32)
    labels.json       {"labels": [...]}  class names in output order
    features.json     kws.features.FeatureConfig.to_dict(): the exact feature parameters
    metrics.json      evaluation metrics of this model (may be {})
    model_info.json   {"name", "version", "alias", "run_id", "architecture", "created_at", ...}
    detector.json     optional: the streaming detector's operating point (kws.streaming.detector
                      DetectorSettings under "settings", chosen on validation streams by the `stream` stage)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kws.atomic import replace_dir, staged_dir  # noqa: F401  (replace_dir re-exported)
from kws.errors import BundleError, ModelNotFoundError
from kws.features import FeatureConfig

KERAS_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
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
    return BundleMeta(path=path, labels=labels, features=features, metrics=metrics, info=info, detector=detector)


def to_tflite(model) -> bytes:
    """Convert a Keras model to a float32 TFLite flatbuffer."""
    import contextlib
    import io

    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with contextlib.redirect_stdout(io.StringIO()):  # Keras' export prints its whole signature
        return converter.convert()


def write_bundle(
    out_dir: str | Path,
    model,
    labels: list[str],
    features: FeatureConfig,
    metrics: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
    detector: dict[str, Any] | None = None,
) -> Path:
    """Write a complete bundle atomically (see :func:`kws.atomic.staged_dir`)."""
    with staged_dir(out_dir) as tmp:
        model.save(tmp / KERAS_FILE)
        (tmp / TFLITE_FILE).write_bytes(to_tflite(model))
        _write_json(tmp / LABELS_FILE, {"labels": list(labels)})
        _write_json(tmp / FEATURES_FILE, features.to_dict())
        _write_json(tmp / METRICS_FILE, metrics or {})
        _write_json(tmp / INFO_FILE, info or {})
        if detector:
            _write_json(tmp / DETECTOR_FILE, detector)
    return out_dir


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
