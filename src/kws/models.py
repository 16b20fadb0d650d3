"""Keras model builders, selected by ``model.name`` in the Hydra config.

Every model takes features shaped ``(frames, n_coeffs, 1)`` (log-mel bands or MFCCs) and starts with a
``Normalization`` layer adapted on the training features, so the exported model is
self-contained: the service feeds it raw :func:`kws.features.extract` output. The input is named
``features`` (:data:`INPUT_NAME`) and the normalization layer ``features_norm`` (:data:`NORM_LAYER`),
whichever front end (``features.kind``) computed them.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from kws.errors import ConfigError

INPUT_NAME = "features"
NORM_LAYER = "features_norm"


def _layers():
    import keras

    return keras, keras.layers, keras.regularizers


def _bn():
    """BatchNorm with momentum 0.9: its moving statistics settle within a few hundred steps,
    which small (synthetic, CI) datasets need; on the full dataset it makes no difference."""
    import keras

    return keras.layers.BatchNormalization(momentum=0.9)


def cnn_seed(inputs, x, n_classes: int, cfg: Mapping[str, Any]):
    """The original project's CNN: 3x (Conv2D -> BN -> MaxPool), Dense 64, Dropout, softmax."""
    keras, L, R = _layers()
    reg = R.l2(float(cfg.get("l2", 0.001)))
    for filters, kernel, pool in ((64, 3, 3), (32, 3, 3), (32, 2, 2)):
        x = L.Conv2D(filters, kernel, activation="relu", kernel_regularizer=reg)(x)
        x = _bn()(x)
        x = L.MaxPooling2D(pool, strides=2, padding="same")(x)
    x = L.Flatten()(x)
    x = L.Dense(64, activation="relu", kernel_regularizer=reg)(x)
    x = L.Dropout(float(cfg.get("dropout", 0.3)))(x)
    return L.Dense(n_classes, activation="softmax")(x)


def ds_cnn(inputs, x, n_classes: int, cfg: Mapping[str, Any]):
    """Depthwise-separable CNN (Hello Edge): strided stem, N x (depthwise 3x3 + pointwise 1x1), GAP."""
    keras, L, R = _layers()
    filters = int(cfg.get("filters", 64))
    reg = R.l2(float(cfg.get("l2", 1e-4)))
    x = L.Conv2D(filters, (10, 4), strides=(2, 2), padding="same", use_bias=False, kernel_regularizer=reg)(x)
    x = _bn()(x)
    x = L.ReLU()(x)
    for _ in range(int(cfg.get("blocks", 4))):
        x = L.DepthwiseConv2D(3, padding="same", use_bias=False, depthwise_regularizer=reg)(x)
        x = _bn()(x)
        x = L.ReLU()(x)
        x = L.Conv2D(filters, 1, use_bias=False, kernel_regularizer=reg)(x)
        x = _bn()(x)
        x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dropout(float(cfg.get("dropout", 0.2)))(x)
    return L.Dense(n_classes, activation="softmax")(x)


def _bc_block(x, channels: int, dilation: int, dropout: float, reg, transition: bool):
    """Broadcasted residual block: a per-frequency 2-D branch plus a time-only branch
    computed on the frequency-averaged map and broadcast back over frequency."""
    keras, L, R = _layers()
    if transition:
        x = L.Conv2D(channels, 1, use_bias=False, kernel_regularizer=reg)(x)
        x = _bn()(x)
        x = L.ReLU()(x)
    identity = x
    # f2: depthwise conv over the coefficient (frequency) axis; layout is (time, freq, channels).
    f2 = L.DepthwiseConv2D((1, 3), padding="same", use_bias=False, depthwise_regularizer=reg)(x)
    f2 = _bn()(f2)
    # f1: average over frequency, depthwise temporal conv, pointwise conv.
    aux = L.AveragePooling2D(pool_size=(1, f2.shape[2]))(f2)
    aux = L.DepthwiseConv2D((3, 1), padding="same", dilation_rate=(dilation, 1), use_bias=False,
                            depthwise_regularizer=reg)(aux)
    aux = _bn()(aux)
    aux = L.Activation("swish")(aux)
    aux = L.Conv2D(channels, 1, use_bias=False, kernel_regularizer=reg)(aux)
    aux = L.SpatialDropout2D(dropout)(aux)
    out = L.Add()([f2, aux]) if transition else L.Add()([identity, f2, aux])  # aux broadcasts over freq
    return L.ReLU()(out)


def bc_resnet(inputs, x, n_classes: int, cfg: Mapping[str, Any]):
    """A small BC-ResNet-style network (Kim et al., 2021) for (time, coefficient) inputs."""
    keras, L, R = _layers()
    width = int(cfg.get("width", 16))
    reg = R.l2(float(cfg.get("l2", 1e-4)))
    dropout = float(cfg.get("dropout", 0.1))
    x = L.Conv2D(2 * width, 5, strides=(2, 1), padding="same", use_bias=False, kernel_regularizer=reg)(x)
    x = _bn()(x)
    x = L.ReLU()(x)
    multipliers = (1.0, 1.5, 2.0, 2.5)
    for stage, n_blocks in enumerate(cfg.get("blocks", (2, 2, 4, 4))):
        channels = int(round(width * multipliers[min(stage, len(multipliers) - 1)]))
        for b in range(int(n_blocks)):
            x = _bc_block(x, channels, dilation=2**stage if b else 1, dropout=dropout, reg=reg, transition=(b == 0))
    x = L.Conv2D(max(32, 2 * width), 1, use_bias=False, kernel_regularizer=reg)(x)
    x = _bn()(x)
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    return L.Dense(n_classes, activation="softmax")(x)


def _tc_block(x, channels: int, kernel: int, stride: int, reg):
    """TC-ResNet's residual block: two temporal convolutions; a 1x1 projection when the shape changes."""
    keras, L, R = _layers()
    y = L.Conv1D(channels, kernel, strides=stride, padding="same", use_bias=False, kernel_regularizer=reg)(x)
    y = L.ReLU()(_bn()(y))
    y = _bn()(L.Conv1D(channels, kernel, padding="same", use_bias=False, kernel_regularizer=reg)(y))
    if stride != 1 or x.shape[-1] != channels:
        x = L.Conv1D(channels, 1, strides=stride, use_bias=False, kernel_regularizer=reg)(x)
        x = L.ReLU()(_bn()(x))
    return L.ReLU()(L.Add()([x, y]))


def tc_resnet(inputs, x, n_classes: int, cfg: Mapping[str, Any]):
    """Temporal-convolution ResNet (TC-ResNet, Choi et al. 2019): the coefficients are the channels
    of 1-D convolutions over time. A 2-D net's small maps of 3x3 filters are slow to train on CPUs;
    these wide 1-D convolutions run several times as many examples per second (docs/benchmarks.md)."""
    keras, L, R = _layers()
    width = float(cfg.get("width", 1.0))
    kernel = int(cfg.get("kernel", 9))
    reg = R.l2(float(cfg.get("l2", 1e-4)))
    for channels in cfg.get("stem2d") or ():  # 2-D 3x3 convolutions first, each halving the coefficients:
        # small shifts along frequency (another voice's formants) then look alike to the 1-D part
        x = L.Conv2D(int(channels), 3, strides=(1, 2), padding="same", use_bias=False, kernel_regularizer=reg)(x)
        x = L.ReLU()(_bn()(x))
    x = L.Reshape((x.shape[1], x.shape[2] * x.shape[3]))(x)  # (frames, coeffs, c) -> (frames, coeffs * c)
    x = L.Conv1D(int(round(16 * width)), 3, padding="same", use_bias=False, kernel_regularizer=reg)(x)
    for channels, stride in zip(cfg.get("channels", (24, 32, 48)), cfg.get("strides", (2, 2, 2))):
        x = _tc_block(x, int(round(channels * width)), kernel, int(stride), reg)
    x = L.GlobalAveragePooling1D()(x)
    x = L.Dropout(float(cfg.get("dropout", 0.2)))(x)
    return L.Dense(n_classes, activation="softmax")(x)


BUILDERS: dict[str, Callable] = {"cnn_seed": cnn_seed, "ds_cnn": ds_cnn, "bc_resnet": bc_resnet,
                                 "tc_resnet": tc_resnet}


def build_model(cfg: Mapping[str, Any], input_shape: tuple[int, int], n_classes: int, train_x: np.ndarray | None = None):
    """Build the model named ``cfg["name"]``; ``train_x`` (n, frames, n_coeffs) adapts its input normalization."""
    keras, L, _ = _layers()
    name = cfg.get("name")
    if name not in BUILDERS:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(BUILDERS)}")
    inputs = keras.Input((*input_shape, 1), name=INPUT_NAME)
    norm = L.Normalization(axis=2, name=NORM_LAYER)  # one mean/variance per coefficient
    if train_x is not None:
        norm.adapt(train_x[..., None].astype("float32", copy=False))  # float32 already: no second copy
    else:
        norm.build((None, *input_shape, 1))
    x = norm(inputs)
    outputs = BUILDERS[name](inputs, x, n_classes, cfg)
    return keras.Model(inputs, outputs, name=name)
