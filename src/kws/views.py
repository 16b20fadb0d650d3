"""The shared-trunk multi-view model: a short clip's test-time shifts in ONE invoke (issue 21).

The service scores a short clip as it is and moved by a few feature hops (``tta_shifts_ms``),
averaging the class scores. The views are windows of one feature pass over the clip zero-padded
by the largest shift (:meth:`kws.serving.predictor.Predictor.clip_scores`); given to the model
as a batch, the model's trunk runs once per view. In a trunk that is a chain of
time-translation-equivariant layers (convolutions and pools, per-frame
normalisation and activations) whose time strides multiply to ``S``, a view that starts ``k``
frames later, ``k`` a multiple of ``S``, has (away from the edges) the trunk output of the padded
clip moved by ``k / S`` steps. So the views model (``model_views.tflite``) takes the PADDED
clip's features, runs the bundle's trunk ONCE over them, and for each shift takes that view's
crop of the trunk output through the bundle's own head (global pooling, the classifier with the
logit offsets already in its bias, any unknown-word fold), then averages the views' softmax
scores: about the cost of one view instead of one per shift.

Not identical to the batch of views: a view's edge steps see the real neighbouring frames
where the separate view saw its convolutions' zero padding. The export records how close they
are on held-out features (``views.json`` ``check``); the real-speech comparison is
``benchmarks/bench_speed.py --views`` (results/speed_views.json), where it scored a little below
the batch of views: so the export leaves it out unless asked
(:data:`kws.training.export.WRITE_VIEWS`).

:func:`write_views` writes it (and its int8 variant when the bundle has int8) with
``views.json`` (the shifts it was built for), at export (:func:`kws.bundle.write_bundle`
``views_shifts_ms``) or into an existing bundle (``python -m kws.views BUNDLE``);
:func:`views_file` is the predictor's choice: a bundle's views model is used wherever it matches.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kws.atomic import write_bytes
from kws.errors import BundleError

log = logging.getLogger(__name__)

VIEWS_FILE = "model_views.tflite"
VIEWS_INT8_FILE = "model_views_int8.tflite"
VIEWS_INFO_FILE = "views.json"
#: Which views file serves which TFLite runtime.
RUNTIME_FILES = {"tflite": VIEWS_FILE, "tflite_int8": VIEWS_INT8_FILE}
#: How many held-out feature rows the export compares the views model with the batch of views on.
CHECK_ROWS = 1000

#: The shifted views of a short clip (ms), with ``KWS_TTA_SHIFTS_MS=0,-40,40``: the clip as it is
#: and moved two 20 ms feature hops earlier and later (zero-filled, like the training time
#: shift), the class scores averaged. Whole hops, so that one feature pass serves all three
#: views; ±40 vs ±60 ms were measured on real speech (benchmarks/bench_speed.py). The views model
#: of this module is built for them.
VIEW_SHIFTS_MS = (0, -40, 40)
#: What the service does by default: the clip alone. The three views above scored the same real
#: speech no better (speaker folds, benchmarks/bench_real.py --variants, results/real_variants.json)
#: at three times the network's cost.
DEFAULT_TTA_SHIFTS_MS = (0,)


def shift_frames(shifts_ms: Sequence[float], cfg) -> tuple[int, ...]:
    """Test-time shifts (ms, positive: later) as whole feature hops, rounded to the nearest
    (half a hop away from zero); a rounded value is logged."""
    hop_ms = 1000.0 * cfg.hop_length / cfg.sample_rate
    frames = tuple(int(math.copysign(math.floor(abs(float(ms)) / hop_ms + 0.5), float(ms))) for ms in shifts_ms)
    moved = [f"{float(ms):g}->{k * hop_ms:g}" for ms, k in zip(shifts_ms, frames) if abs(k * hop_ms - float(ms)) > 1e-6]
    if moved:
        log.warning("test-time shifts must be whole feature hops (%g ms): rounded %s ms", hop_ms, ", ".join(moved))
    return frames or (0,)


# --------------------------------------------------------------------------- the predictor's choice
def views_file(meta, runtime: str, frames: Sequence[int]) -> tuple[Path | None, str]:
    """The bundle's views model for ``runtime`` and the shifts ``frames`` (feature hops), and why
    (or why not): ``(path or None, reason)``. Only a model built for the same shifts (in any
    order) and the same TFLite runtime answers as the batch of views would."""
    views = meta.views
    if not views:
        return None, f"the bundle has no views model ({VIEWS_INFO_FILE})"
    if "error" in views:
        return None, str(views["error"])
    built = sorted(int(k) for k in views.get("shift_frames", []))
    if built != sorted(int(k) for k in frames):
        return None, f"its views model was built for shifts of {built} frames, the service uses {sorted(frames)}"
    name = views.get("files", {}).get(runtime)
    if name is None:
        return None, f"its views model has no {runtime} variant"
    path = meta.path / name
    if not path.is_file():
        return None, f"{VIEWS_INFO_FILE} names {name}, which is missing"
    return path, f"built for these shifts ({name})"


# --------------------------------------------------------------------------- building it
def _chain(model) -> list | None:
    """``model``'s layers (no input layer) when they form one chain from input to output, else None."""
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    prev = model.inputs[0]
    for layer in layers:
        if layer.input is not prev:  # node 0: the layer's call in ``model`` (a later model may share it)
            return None
        prev = layer.output
    return layers if prev is model.outputs[0] else None


def _time_stride(layer) -> int | None:
    """The layer's stride in time (axis 1) if it keeps time-translation equivariance, else None.
    Convolutions and pools of either padding (``valid`` has no edge effect at all; where a stride
    meets ``same`` padding, :func:`views_model` checks the alignment)."""
    import keras

    L = keras.layers
    if isinstance(layer, (L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D, L.MaxPooling2D, L.AveragePooling2D)):
        return int(layer.strides[0]) if layer.padding in ("same", "valid") else None
    if isinstance(layer, L.Normalization):
        axes = layer.axis if isinstance(layer.axis, (tuple, list)) else (layer.axis,)
        return None if 1 in axes else 1
    if isinstance(layer, (L.BatchNormalization, L.ReLU, L.Activation, L.LeakyReLU, L.Dropout, L.SpatialDropout2D)):
        return 1 if not isinstance(layer, L.BatchNormalization) or layer.axis in (-1, 3) else None
    return None


def split_trunk(model) -> tuple[list, list, int]:
    """``(trunk layers, head layers, time stride)``: the head starts at the global average pooling.
    Raises :class:`BundleError` saying why when the architecture does not allow a views model."""
    import keras

    layers = _chain(model)
    if layers is None:
        raise BundleError(f"{model.name} is not a single chain of layers")
    pools = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    if not pools:
        raise BundleError(f"{model.name} has no GlobalAveragePooling2D before its head")
    trunk, head = layers[:pools[0]], layers[pools[0]:]
    stride = 1
    for layer in trunk:
        s = _time_stride(layer)
        if s is None:
            raise BundleError(f"{model.name}'s layer {layer.name} ({type(layer).__name__}) is not time-shift "
                              "equivariant")
        stride *= s
    return trunk, head, stride


def views_model(model, frames: Sequence[int], rows: np.ndarray | None = None):
    """The Keras views model of ``model`` for shifts of ``frames`` feature hops (the layers are
    ``model``'s own: the same weights). Input: the features of the clip padded by
    ``max(|frames|)`` hops on both sides. Raises :class:`BundleError` when the architecture or the
    shifts do not allow it, or when the crops do not match the separate views' trunk outputs in
    the middle (``rows``: padded feature rows for that check, else random ones)."""
    import keras

    trunk, head, stride = split_trunk(model)
    pad = max(abs(int(k)) for k in frames)
    if any((pad - int(k)) % stride for k in frames):
        raise BundleError(f"shifts of {list(frames)} frames are not multiples of {model.name}'s time stride {stride}")
    n_frames, n_coeffs = (int(d) for d in model.inputs[0].shape[1:3])
    inp = keras.Input((n_frames + 2 * pad, n_coeffs, 1), name=model.inputs[0].name)
    x = inp
    for layer in trunk:
        x = layer(x)
    steps, view_steps = int(x.shape[1]), int(trunk[-1].output.shape[1])
    starts = [(pad - int(k)) // stride for k in frames]
    if max(starts) + view_steps > steps:
        raise BundleError(f"{model.name}'s trunk gives {steps} steps for the padded clip, too few for the views")
    _check_alignment(keras.Model(inp, x), keras.Model(model.inputs[0], trunk[-1].output), pad, frames, starts, rows)
    scores = []
    for i, start in enumerate(starts):
        y = keras.layers.Cropping2D(((start, steps - start - view_steps), (0, 0)), name=f"view_{i}")(x)
        for layer in head:
            y = layer(y)
        scores.append(y)
    if len(scores) == 1:
        return keras.Model(inp, scores[0], name=f"{model.name}_views")
    n_labels = int(scores[0].shape[-1])
    mean = keras.layers.Dense(n_labels, use_bias=False, trainable=False, name="views_mean")
    out = mean(keras.layers.Concatenate(name="views")(scores))
    mean.set_weights([np.tile(np.eye(n_labels, dtype=np.float32), (len(scores), 1)) / len(scores)])
    return keras.Model(inp, out, name=f"{model.name}_views")


def _check_alignment(padded_trunk, view_trunk, pad: int, frames, starts, rows) -> None:
    """The crops of the padded trunk output must equal each separate view's trunk output in the
    middle third of the steps (the edges legitimately differ)."""
    n_frames = int(view_trunk.inputs[0].shape[1])
    if rows is None:
        rows = np.random.default_rng(0).standard_normal((2, n_frames + 2 * pad, *padded_trunk.inputs[0].shape[2:]))
    rows = np.asarray(rows[:4], np.float32)
    full = np.asarray(padded_trunk(rows, training=False))
    for k, start in zip(frames, starts):
        alone = np.asarray(view_trunk(rows[:, pad - int(k):pad - int(k) + n_frames], training=False))
        third = alone.shape[1] // 3
        mid = slice(third, alone.shape[1] - third)
        diff = np.abs(full[:, start:start + alone.shape[1]][:, mid] - alone[:, mid]).max()
        if diff > 1e-4 * max(1.0, float(np.abs(alone).max())):
            raise BundleError(f"the views model's crop for a shift of {k} frames does not match the separate view "
                              f"(max difference {diff:.3g}): the trunk is not shift equivariant as assumed")


def pad_rows(x: np.ndarray, pad: int) -> np.ndarray:
    """Feature rows ``(n, frames, n_coeffs[, 1])`` -> ``(n, frames + 2 pad, n_coeffs, 1)``, their
    edge frames repeated: stand-ins for padded clips where only the clips' features exist (the
    int8 calibration and the export check)."""
    x = np.asarray(x, np.float32)
    x = x if x.ndim == 4 else x[..., None]
    return np.pad(x, ((0, 0), (pad, pad), (0, 0), (0, 0)), mode="edge")


def batch_rule(scores_fn, padded: np.ndarray, frames: Sequence[int], n_frames: int) -> np.ndarray:
    """The batch-of-views rule on padded rows: each view's window through ``scores_fn``, averaged."""
    pad = max(abs(int(k)) for k in frames)
    return np.mean([scores_fn(padded[:, pad - int(k):pad - int(k) + n_frames]) for k in frames], axis=0)


def compare(views: bytes, single: bytes, padded: np.ndarray, frames, n_frames: int,
            y: np.ndarray | None) -> dict[str, Any]:
    """The views model vs the batch of views of the single-view model on the same padded rows."""
    from kws.bundle import tflite_scores

    got = tflite_scores(views, padded)
    want = batch_rule(lambda v: tflite_scores(single, v), padded, frames, n_frames)
    out = {"rows": int(len(padded)), "max_abs_diff": round(float(np.abs(got - want).max()), 6),
           "mean_abs_diff": round(float(np.abs(got - want).mean()), 6),
           "argmax_agreement": round(float(np.mean(got.argmax(1) == want.argmax(1))), 4)}
    if y is not None:
        out.update(accuracy_views=round(float(np.mean(got.argmax(1) == y)), 4),
                   accuracy_batch=round(float(np.mean(want.argmax(1) == y)), 4))
    return out


def write_views(folder: Path, model, features, shifts_ms: Sequence[float] = VIEW_SHIFTS_MS,
                representative: np.ndarray | None = None, check: tuple[np.ndarray, np.ndarray] | None = None,
                source: str = "export") -> dict[str, Any] | None:
    """Write ``model_views.tflite`` (and, with ``representative`` training feature rows,
    ``model_views_int8.tflite`` calibrated on them, edge-padded) and then ``views.json`` into the
    bundle ``folder``; ``check`` (held-out ``(x, y)``) is compared on (:func:`compare`). Returns
    ``views.json``'s content, or None (logged) when the architecture or shifts do not allow it."""
    from kws.bundle import TFLITE_FILE, TFLITE_INT8_FILE, representative_sample, to_tflite, to_tflite_int8

    frames = tuple(shift_frames(shifts_ms, features))  # duplicates weigh, as in the batch of views
    pad = max(abs(k) for k in frames)
    calib = pad_rows(representative_sample(representative), pad) if representative is not None else None
    try:
        if pad == 0:
            raise BundleError("no test-time shifts: the clip alone needs no views model")
        keras_views = views_model(model, frames, calib)
    except BundleError as err:
        log.info("no views model: %s", err.message)
        return None
    hop_ms = 1000.0 * features.hop_length / features.sample_rate
    info: dict[str, Any] = {
        "shift_frames": list(frames), "shifts_ms": [k * hop_ms for k in frames], "pad_frames": pad,
        "input_frames": features.n_frames + 2 * pad, "files": {"tflite": VIEWS_FILE}, "source": source,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    contents = {"tflite": to_tflite(keras_views)}
    if calib is not None:
        contents["tflite_int8"] = to_tflite_int8(keras_views, calib)
        info["files"]["tflite_int8"] = VIEWS_INT8_FILE
    if check is not None:
        x, y = check
        pick = np.sort(np.random.default_rng(0).choice(len(x), min(len(x), CHECK_ROWS), replace=False))
        padded = pad_rows(np.asarray(x)[pick], pad)
        singles = {"tflite": TFLITE_FILE, "tflite_int8": TFLITE_INT8_FILE}
        info["check"] = {"padding": "held-out feature rows, their edge frames repeated",
                         **{rt: compare(content, (folder / singles[rt]).read_bytes(), padded, frames,
                                        features.n_frames, np.asarray(y)[pick])
                            for rt, content in contents.items() if (folder / singles[rt]).is_file()}}
    for rt, content in contents.items():
        write_bytes(folder / RUNTIME_FILES[rt], content)
    write_bytes(folder / VIEWS_INFO_FILE, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    log.info("views model for shifts %s frames: %s", list(frames), info.get("check", info["files"]))
    return info


def add_views(bundle: str | Path, shifts_ms: Sequence[float] = VIEW_SHIFTS_MS,
              features_dir: str | Path | None = None) -> dict[str, Any] | None:
    """Build the views model into an existing bundle, in place (views.json last). The int8
    variant needs the bundle's ``model_int8.tflite`` and ``features_dir``'s ``train.npz`` (its
    calibration rows, as at export); ``validation.npz`` there, if any, is the check."""
    import keras

    from kws.bundle import KERAS_FILE, TFLITE_INT8_FILE, read_meta

    meta = read_meta(bundle)
    model = keras.saving.load_model(meta.path / KERAS_FILE, compile=False)
    representative = check = None
    if features_dir is not None:
        features_dir = Path(features_dir)
        if (meta.path / TFLITE_INT8_FILE).is_file() and (features_dir / "train.npz").is_file():
            representative = np.load(features_dir / "train.npz")["x"]
        if (features_dir / "validation.npz").is_file():
            val = np.load(features_dir / "validation.npz")
            check = (val["x"], val["y"])
    return write_views(meta.path, model, meta.features, shifts_ms, representative, check, source="kws.views")


def main(argv: list[str] | None = None) -> int:
    from kws.cli import run_cli

    p = argparse.ArgumentParser(prog="python -m kws.views", description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path, help="a serving bundle (model.keras, model.tflite, ...)")
    p.add_argument("--shifts-ms", default=",".join(str(s) for s in VIEW_SHIFTS_MS),
                   help="the service's KWS_TTA_SHIFTS_MS (comma-separated ms)")
    p.add_argument("--features", type=Path, default=None,
                   help="the prepare output (train.npz: int8 calibration; validation.npz: the check)")
    args = p.parse_args(argv)

    def _run() -> None:
        shifts = [float(s) for s in args.shifts_ms.split(",") if s.strip()]
        info = add_views(args.bundle, shifts, args.features)
        if info is None:
            raise BundleError(f"{args.bundle}: its architecture or the shifts allow no views model (see the log)")
        print(json.dumps(info, indent=2))

    return run_cli(_run)


if __name__ == "__main__":
    raise SystemExit(main())
