"""Seed ensembles (``train.ensemble_seeds``): the same recipe trained again from other training
seeds on the same features, exported as ONE model whose output is the mean of the members'
softmax outputs.

Why: the pool is a few thousand clips of ~140 training speakers, so two runs of one recipe that
differ only in their seed disagree on a few percent of a new speaker's clips, mostly where each is
unsure. Their average is right more often than either and is less often sure of a wrong word,
which is what a stream's false accepts are (docs/benchmarks.md, "Seed ensembles"). One graph keeps
everything downstream unchanged: one TFLite file (and its int8 twin), one ``predict`` per window,
``model.keras`` for evaluate; it costs one forward pass per member.

Each member is exported first (its logit offsets already in its softmax), so the average is of
what each member would answer alone.
"""

from __future__ import annotations


def averaged(members: list, name: str = "ensemble"):
    """One Keras model: the input to every member, the mean of their outputs. A single member is
    returned as it is (no extra layer)."""
    import keras

    if len(members) == 1:
        return members[0]
    # the members are the same architecture, so the same layer names: each goes in as a model of its own
    wrapped = [keras.Model(m.inputs, m.outputs[0], name=f"member{i}") for i, m in enumerate(members)]
    inputs = keras.Input(members[0].input_shape[1:], name="features")
    return keras.Model(inputs, keras.layers.Average(name="mean_probability")([m(inputs) for m in wrapped]), name=name)


def summary(model, members: list[dict], splits) -> dict:
    """The run's summary for an ensemble: the first member's keys, with ``val_accuracy`` and
    ``val_loss`` the ensemble's own (on validation, by the task's labels), the seconds and weights
    of all members, and each member's validation accuracy."""
    import numpy as np

    from kws.training.export import task_targets

    probs, y = model.predict(splits.x_val[..., None], batch_size=512, verbose=0), task_targets(splits)
    return members[0] | {
        "val_accuracy": float(np.mean(probs.argmax(1) == y)),
        "val_loss": float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)))),
        "train_seconds": float(sum(m["train_seconds"] for m in members)),
        "params_count": int(model.count_params()),
        "members": len(members),
        "member_val_accuracy": [float(m["val_accuracy"]) for m in members],
    }
