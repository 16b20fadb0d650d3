"""The data a run trains on: the prepared splits with their per-example weights and targets
(:func:`load`), and the tf.data pipelines (:func:`datasets`): seeded shuffling, SpecAugment-style
masking, one-hot targets, optional mixup, bounded epochs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kws.artifacts import load_files, load_meta, load_split
from kws.errors import ConfigError
from kws.features import FeatureConfig
from kws.training.heads import fold_matrix, word_targets

log = logging.getLogger(__name__)


@dataclass
class Splits:
    """The training and validation splits as training uses them."""

    meta: dict  # the prepare stage's meta.json
    labels: list[str]
    features: FeatureConfig
    x_train: np.ndarray
    y_train: np.ndarray  # targets: with train.unknown_by_word, one class per unknown word after the labels
    w_train: np.ndarray  # per-example weights (extra sources, train.class_weights)
    x_val: np.ndarray
    y_val: np.ndarray

    @property
    def n_train(self) -> int:
        return len(self.y_train)


def load(t, features_dir: Path) -> Splits:
    """The prepared splits, with ``train.class_weights`` applied to the training weights."""
    meta = load_meta(features_dir)
    labels = meta["labels"]
    x_train, y_train, w_train = load_split(features_dir, "train", weights=True)
    x_val, y_val = load_split(features_dir, "validation")
    w_train = class_weighted(w_train, y_train, labels, t.get("class_weights"))
    return Splits(meta, labels, FeatureConfig.from_dict(meta["features"]), x_train, y_train, w_train, x_val, y_val)


def class_weighted(w: np.ndarray, y: np.ndarray, labels: list[str], factors) -> np.ndarray:
    """``train.class_weights`` (label -> factor, e.g. ``{_unknown_: 2}``: class balancing) times ``w``."""
    for label, factor in (factors or {}).items():
        if label not in labels:
            raise ConfigError(f"train.class_weights names {label!r}, not one of the task's labels {labels}")
        w = np.where(y == labels.index(label), w * float(factor), w).astype(np.float32)
    return w


def unknown_words(splits: Splits, features_dir: Path, by_word: bool) -> tuple[list[str], np.ndarray]:
    """``train.unknown_by_word``: retarget the splits' unknown examples to one class per word, in
    place. ``(words, fold)``: the words (none when off) and the matrix that folds them into ``_unknown_``."""
    words: list[str] = []
    if by_word:
        splits.y_train, words = word_targets(splits.y_train, load_files(features_dir, "train"), splits.labels)
        splits.y_val, _ = word_targets(splits.y_val, load_files(features_dir, "validation"), splits.labels, words)
        log.info("train.unknown_by_word: %d unknown words trained as classes of their own, summed into "
                 "_unknown_ by the exported model", len(words))
    return words, fold_matrix(splits.labels, words)


def datasets(t, splits: Splits, n_classes: int, fill: np.ndarray, batch: int, seed: int, bounded: bool,
             multi_worker: bool):
    """``(train, validation)`` tf.data pipelines. ``fill``: what SpecAugment masks with; ``bounded``:
    one endless reshuffled stream, each (bounded) epoch takes its next steps."""
    import tensorflow as tf

    sa = t.spec_augment
    one_hot = lambda x, y, w: (x, tf.one_hot(y, n_classes), w)  # noqa: E731
    # Shuffled as indices, the examples gathered after: a shuffle buffer of the examples would be a
    # second copy of the training split (at full size ~1 GB a model); the order is the same, since
    # shuffle's permutation depends only on its seed and the number of elements.
    x, y, w = (tf.convert_to_tensor(a) for a in (splits.x_train[..., None], splits.y_train, splits.w_train))
    train_ds = (
        tf.data.Dataset.range(splits.n_train)
        .shuffle(splits.n_train, seed=seed, reshuffle_each_iteration=True)
        .map(lambda i: (tf.gather(x, i), tf.gather(y, i), tf.gather(w, i)))
        .map(spec_augment(fill, sa.time_masks, sa.time_mask_max, sa.freq_masks, sa.freq_mask_max),
             num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch)
        .map(one_hot)
    )
    if float(t.get("mixup_alpha", 0.0)) > 0:
        train_ds = train_ds.map(mixup(float(t.mixup_alpha)))
    if bounded:
        train_ds = train_ds.repeat()
    train_ds = train_ds.prefetch(tf.data.AUTOTUNE)
    val_ds = tf.data.Dataset.from_tensor_slices((splits.x_val[..., None], tf.one_hot(splits.y_val, n_classes))).batch(256)
    if multi_worker:
        # Every worker builds the same, equally seeded pipeline and takes its share of each batch
        # (in-memory arrays: there are no files to shard by).
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_ds, val_ds = train_ds.with_options(options), val_ds.with_options(options)
    return train_ds, val_ds


def spec_augment(fill: np.ndarray, time_masks: int, time_mask_max: int, freq_masks: int, freq_mask_max: int):
    """A tf.data map masking random frame and coefficient bands with ``fill`` (the training
    mean per coefficient, i.e. zero after the model's normalization layer)."""
    import tensorflow as tf

    fill = tf.constant(fill.reshape(1, -1, 1), tf.float32)

    def band(size: int, max_width: int):
        width = tf.random.uniform([], 0, max_width + 1, tf.int32)
        start = tf.random.uniform([], 0, tf.maximum(size - width, 0) + 1, tf.int32)
        idx = tf.range(size)
        return (idx >= start) & (idx < start + width)

    def apply(x, y, w):
        frames, coeffs = x.shape[0], x.shape[1]
        for _ in range(time_masks):
            x = tf.where(band(frames, time_mask_max)[:, None, None], fill, x)
        for _ in range(freq_masks):
            x = tf.where(band(coeffs, freq_mask_max)[None, :, None], fill, x)
        return x, y, w

    return apply


def mixup(alpha: float):
    """A tf.data map over BATCHES: mix every example with another of the batch, weight
    ``lam ~ Beta(alpha, alpha)``, features, one-hot labels and sample weights alike."""
    import tensorflow as tf

    def apply(x, y, w):
        n = tf.shape(x)[0]
        g1, g2 = tf.random.gamma([n], alpha), tf.random.gamma([n], alpha)
        lam = g1 / (g1 + g2)
        perm = tf.random.shuffle(tf.range(n))
        mix = lambda a, r: lam[(...,) + (None,) * r] * a + (1 - lam[(...,) + (None,) * r]) * tf.gather(a, perm)  # noqa: E731
        return mix(x, 3), mix(y, 1), mix(w, 0)

    return apply
