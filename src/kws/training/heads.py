"""The classifier head's maths. ``train.unknown_by_word``: each unknown word trains as a class
of its own (one ``_unknown_`` class mixes dissimilar words), and the exported model folds them
back into ``_unknown_`` with a fixed 0/1 layer, so it has the task's outputs. ``train.logit_offsets``:
constants added to the exported model's logits (a log-prior correction, softmax(log p + b)), so
every consumer of the bundle decides with them."""

from __future__ import annotations

import logging

import numpy as np

from kws.errors import ConfigError
from kws.labels import UNKNOWN

log = logging.getLogger(__name__)


def word_targets(y: np.ndarray, files: np.ndarray, labels: list[str],
                 words: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """``train.unknown_by_word``: every ``_unknown_`` example's target becomes a class of its own
    word (``word/clip.wav``), after the task's labels: ``len(labels) + words.index(word)``.
    ``words`` (None: the sorted unknown words of ``files``) is the vocabulary; an unknown example
    whose word is not in it keeps the ``_unknown_`` class (the head folds them together anyway)."""
    if UNKNOWN not in labels:
        return y, []
    unknown = y == labels.index(UNKNOWN)
    example_words = np.asarray([str(f).split("/", 1)[0] for f in files])
    if words is None:
        words = sorted(set(example_words[unknown]))
    column = {w: len(labels) + i for i, w in enumerate(words)}
    mapped = np.asarray([column.get(w, -1) for w in example_words], np.int64)
    targets = np.where(unknown & (mapped >= 0), mapped, y)
    return targets.astype(np.int64), list(words)


def fold_matrix(labels: list[str], words: list[str]) -> np.ndarray:
    """``(len(labels) + len(words), len(labels))`` 0/1: a label to itself, each unknown word to ``_unknown_``."""
    fold = np.zeros((len(labels) + len(words), len(labels)), np.float32)
    fold[np.arange(len(labels)), np.arange(len(labels))] = 1.0
    if words:
        fold[len(labels):, labels.index(UNKNOWN)] = 1.0
    return fold


def folded_accuracy(fold: np.ndarray):
    """Keras metric ``accuracy`` of the task's labels when the head has one class per unknown word."""
    import keras
    import tensorflow as tf

    matrix = tf.constant(fold)

    def accuracy(y_true, y_pred):
        true = tf.argmax(tf.matmul(tf.cast(y_true, tf.float32), matrix), axis=-1)
        pred = tf.argmax(tf.matmul(tf.cast(y_pred, tf.float32), matrix), axis=-1)
        return tf.cast(tf.equal(true, pred), tf.float32)

    return keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")


def fold_head(model, fold: np.ndarray):
    """``model`` (softmax over labels + unknown words) -> the same layers plus a fixed 0/1 matrix
    that sums each unknown word's probability into ``_unknown_``: a softmax over the task's labels."""
    import keras

    layer = keras.layers.Dense(fold.shape[1], use_bias=False, trainable=False, name="unknown_words_to_unknown")
    folded = keras.Model(model.inputs, layer(model.outputs[0]), name=model.name)
    layer.set_weights([fold])
    if getattr(model, "optimizer", None) is not None:  # keep the trained optimizer (state, schedule) in model.keras
        folded.compile(optimizer=model.optimizer, loss=keras.losses.CategoricalCrossentropy(),
                       metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    return folded


def shift_logits(model, offsets: dict[str, float], labels: list[str], fold: np.ndarray) -> None:
    """Add ``offsets`` (label -> number) to the bias of ``model``'s softmax classifier, in place.
    With one class per unknown word (``fold``), each word's class gets ``_unknown_``'s offset."""
    import keras

    if not offsets:
        return
    by_label = np.asarray([offsets.get(label, 0.0) for label in labels], np.float32)
    head = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)
            and getattr(layer.activation, "__name__", "") == "softmax"]
    if not head or not head[-1].use_bias:
        raise ConfigError(f"train.logit_offsets needs a model that ends in a softmax Dense layer with a bias; "
                          f"{model.name} does not")
    kernel, bias = head[-1].get_weights()
    head[-1].set_weights([kernel, bias + fold @ by_label])
    log.info("train.logit_offsets: %s added to the exported model's logits",
             ", ".join(f"{label} {v:+g}" for label, v in offsets.items()))
