"""The train stage's library, one job per module (:mod:`kws.stages.train` orchestrates them):

* :mod:`~kws.training.settings` — ``train.*`` / ``trainer.*`` checked before TensorFlow loads
* :mod:`~kws.training.distribute` — devices, tf.distribute strategy, mixed precision, multi-worker fixes
* :mod:`~kws.training.data` — the splits as training reads them, and the tf.data pipelines
* :mod:`~kws.training.heads` — the unknown-word head and the exported model's logit offsets
* :mod:`~kws.training.fit` — the compiled model and ``fit`` itself
* :mod:`~kws.training.callbacks` — progress, MLflow epoch metrics, EMA, early stopping
* :mod:`~kws.training.ensemble` — a seed ensemble's members averaged into one model
* :mod:`~kws.training.export` — the MLflow run and the outputs: history, bundle, run.json
"""
