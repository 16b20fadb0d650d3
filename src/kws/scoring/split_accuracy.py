"""A serving bundle's accuracy on a rendered test split (``test_examples.json``), as promote compares models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kws.errors import NotComparableError


def bundle_accuracy(bundle_dir: Path, test_set: dict, batch: int = 128) -> float:
    """Accuracy of any serving bundle on a test split described by ``test_examples.json``
    (:data:`kws.artifacts.TEST_EXAMPLES_FILE`, written by the prepare stage): every example is
    rendered from the dataset again and scored by the service's predictor with the BUNDLE's own
    front end, so models with different features are compared on the very same clips.
    Raises :class:`NotComparableError` when the bundle predicts other labels."""
    from kws.audio import load_file
    from kws.dataset import Example, render
    from kws.serving.predictor import Predictor

    predictor = Predictor(bundle_dir, runtime="tflite", warmup=False)
    if list(predictor.labels) != list(test_set["labels"]):
        raise NotComparableError(
            f"the model in {bundle_dir} predicts {predictor.labels}, the test set has {test_set['labels']}")
    cfg = predictor.cfg
    examples = [Example(**e) for e in test_set["examples"]]
    noise = [load_file(f, cfg.sample_rate) for f in test_set["noise_files"]] if any(e.noise >= 0 for e in examples) else []
    roots = [Path(test_set["root"])]
    correct = 0
    for i in range(0, len(examples), batch):
        chunk = examples[i : i + batch]
        waves = np.stack([render(e, roots, noise, cfg.clip_samples, cfg.sample_rate) for e in chunk])
        scores = predictor.clip_scores(waves)  # as the service scores a clip (test-time shifts included)
        correct += int(np.sum(scores.argmax(axis=1) == np.asarray([e.label for e in chunk])))
    return correct / max(1, len(examples))
