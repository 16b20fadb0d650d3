"""The training settings, checked: every invalid ``train.*`` or ``trainer.*`` value is a
:class:`~kws.errors.ConfigError` raised before TensorFlow is loaded (a misspelt option must not
cost a TensorFlow start-up, nor fail after an epoch)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from kws.errors import ConfigError

log = logging.getLogger(__name__)

KEEP_WEIGHTS = ("best_val", "last")
STRATEGIES = ("none", "mirrored", "multi_worker")
#: hardware keys that moved from the recipe (``train``) to the ``trainer`` config group
TRAINER_KEYS = ("distribute", "mixed_precision")


@dataclass(frozen=True)
class Settings:
    """What :func:`check` read: the strategy, precision, kept weights, EMA and training seeds of a run."""

    distribute: str
    mixed_precision: bool
    keep_weights: str
    ema_momentum: float | None
    seeds: list[int]  # one per model trained (:func:`member_seeds`)
    threads: int | None  # trainer.threads (None: TensorFlow's default, every core)
    parallel_models: int | None  # trainer.parallel_models (None: auto)


def check(cfg) -> Settings:
    """Check every setting that can be checked without the data (the label-dependent part of
    ``train.logit_offsets`` waits for the labels)."""
    t = cfg.train
    kind, mixed = distribute_config(cfg)
    bounded_steps(t, 1)
    settings = Settings(kind, mixed, keep_weights(t), ema_momentum(t), member_seeds(cfg), threads(cfg),
                        parallel_models(cfg, kind))
    logit_offsets(t)
    return settings


def keep_weights(t) -> str:
    """``train.keep_weights``: ``best_val`` (the epoch with the best validation accuracy, restored
    at the end) or ``last`` (the weights training ends with: a cosine schedule has annealed them;
    a small validation split picks an earlier, less converged epoch by noise)."""
    keep = str(t.get("keep_weights", "best_val"))
    if keep not in KEEP_WEIGHTS:
        raise ConfigError(f"unknown train.keep_weights {keep!r}: use best_val or last")
    return keep


def ema_momentum(t) -> float | None:
    """``train.ema_momentum``: null (off) or a momentum in (0, 1). On, the optimizer keeps an
    exponential moving average of the weights (Polyak averaging: a run's last few epochs averaged,
    so a smaller draw of the weights' noise), and validation, the kept epoch and the exported model
    all use that average (Keras' ``use_ema`` with its ``SwapEMAWeights`` callback)."""
    value = t.get("ema_momentum", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(f"train.ema_momentum must be null (off) or a number between 0 and 1 "
                          f"(e.g. 0.998), not {value!r}")
    return float(value)


def logit_offsets(t, labels: list[str] | None = None) -> dict[str, float]:
    """``train.logit_offsets``: null or ``{label: offset}``, checked (numbers first, the labels once
    the task's ``labels`` are known: a label of no task is an error, one of another task's labels,
    e.g. ``_unknown_`` under ``all_words``, does not apply and is left out). The exported model's
    probabilities become softmax(log p + offset): a positive offset for ``_unknown_`` answers it
    more often (fewer false accepts of other words, a few more missed keywords); training itself
    is unchanged."""
    from kws.labels import task_labels

    value = t.get("logit_offsets", None) or {}
    if not hasattr(value, "items"):
        raise ConfigError(f"train.logit_offsets must be null or a mapping label -> number "
                          f"(e.g. {{_unknown_: 0.5}}), not {value!r}")
    offsets = {}
    for label, offset in value.items():
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset):
            raise ConfigError(f"train.logit_offsets.{label} must be a finite number, not {offset!r}")
        if label not in {*task_labels("keywords"), *task_labels("all_words")}:
            raise ConfigError(f"train.logit_offsets names {label!r}, which is no task's label "
                              f"(e.g. _unknown_, _silence_, yes)")
        if labels is not None and label not in labels:
            log.info("train.logit_offsets.%s left out: not a label of this task", label)
            continue
        offsets[str(label)] = float(offset)
    return offsets


def member_seeds(cfg) -> list[int]:
    """The training seed of every model a run trains: ``train.seed`` (null: the top-level ``seed``,
    which also seeds prepare) and then one per ``train.ensemble_seeds`` entry. Each seed sets the
    initial weights, the shuffling and the masks; the features are the same for all. More than one
    seed: a seed ensemble (:mod:`kws.training.ensemble`)."""
    t = cfg.train
    first = t.get("seed")
    first = cfg.seed if first is None else first
    extra = t.get("ensemble_seeds") or []
    if isinstance(extra, (str, bytes)) or not hasattr(extra, "__iter__"):
        raise ConfigError(f"train.ensemble_seeds must be a list of integers (e.g. [7, 1234]) or [], not {extra!r}")
    seeds = [first, *extra]
    for name, value in zip(["train.seed", *(f"train.ensemble_seeds[{i}]" for i in range(len(extra)))], seeds):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be a non-negative integer, not {value!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"train.ensemble_seeds must differ from each other and from the training seed "
                          f"{first} (the same seed trains the same model twice): {list(extra)}")
    return [int(v) for v in seeds]


def bounded_steps(t, full_steps: int) -> int:
    """Steps per epoch: ``full_steps`` (the whole training split) unless ``train.steps_per_epoch``
    (null = the whole epoch) bounds it, for benchmarks and smoke runs. :class:`ConfigError` when invalid."""
    bound = t.get("steps_per_epoch")
    if bound is None:
        return full_steps
    if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
        raise ConfigError(f"train.steps_per_epoch must be a positive integer or null, got {bound!r}")
    return min(full_steps, bound)


def distribute_config(cfg) -> tuple[str, bool]:
    """``(trainer.distribute, trainer.mixed_precision)``, checked: :class:`ConfigError` when invalid,
    or when a params.yaml still carries them under ``train`` (where they were before the
    ``trainer`` group: hardware is chosen apart from the recipe)."""
    moved = [key for key in TRAINER_KEYS if key in (cfg.get("train") or {})]
    if moved:
        raise ConfigError(f"train.{moved[0]} is now trainer.{moved[0]}: choose the hardware with "
                          f"trainer=cpu|gpu|mirrored|multi_worker (or trainer.{moved[0]}=...) and "
                          f"regenerate params.yaml (`kws-params ...`)")
    trainer = cfg.get("trainer") or {}
    kind = trainer.get("distribute", "none")
    kind = "none" if kind is None else str(kind).strip().lower()
    if kind not in STRATEGIES:
        raise ConfigError(f"unknown trainer.distribute {trainer.get('distribute')!r}: use none, mirrored or "
                          f"multi_worker (or a preset: trainer=cpu|gpu|mirrored|multi_worker)")
    mixed = trainer.get("mixed_precision", False)
    if not isinstance(mixed, bool):
        raise ConfigError(f"trainer.mixed_precision must be true or false, got {mixed!r}")
    return kind, mixed


def threads(cfg) -> int | None:
    """``trainer.threads``: TensorFlow's intra- and inter-op threads for each model trained, or null
    (TensorFlow's default: every core). The thread count is part of what fixes the weights (it
    changes the order of some sums), so a fixed count trains the same weights on any machine."""
    value = (cfg.get("trainer") or {}).get("threads")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"trainer.threads must be a positive integer or null (every core), not {value!r}")
    return value


def parallel_models(cfg, kind: str) -> int | None:
    """``trainer.parallel_models``: how many of a seed ensemble's models train at once, each in a
    process of its own; ``auto`` (None here): as many as the cores hold at ``trainer.threads`` each
    (:func:`kws.training.members.processes`). More than one needs ``trainer.distribute=none``."""
    value = (cfg.get("trainer") or {}).get("parallel_models", 1)
    if value == "auto":
        return None if kind == "none" else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"trainer.parallel_models must be auto or a positive integer, not {value!r}")
    if value > 1 and kind != "none":
        raise ConfigError(f"trainer.parallel_models={value} trains models side by side in processes of their own, "
                          f"which trainer.distribute={kind} cannot: use trainer.parallel_models=1")
    return value


def learning_rate(t, steps_per_epoch: int):
    """``train.lr_schedule``: ``plateau`` (a constant, halved by a callback on a val-loss
    plateau) or ``cosine`` (linear warm-up for one epoch, cosine decay to 1 % over all epochs)."""
    import keras

    lr = float(t.learning_rate)
    kind = str(t.get("lr_schedule", "plateau"))
    if kind == "plateau":
        return lr
    if kind == "cosine":
        total = max(1, int(t.epochs) * steps_per_epoch)
        warmup = min(steps_per_epoch, total // 2)
        return keras.optimizers.schedules.CosineDecay(lr * 0.1, total - warmup, alpha=0.01,
                                                      warmup_target=lr, warmup_steps=warmup)
    raise ConfigError(f"unknown train.lr_schedule {kind!r}: use plateau or cosine")
