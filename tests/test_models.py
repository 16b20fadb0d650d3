"""Model builders: the TC-ResNet option builds, keeps its shapes and exports to TFLite like the others."""

import numpy as np
import pytest

TC = {"name": "tc_resnet", "width": 0.5, "kernel": 3, "channels": [8, 8], "strides": [2, 1]}


@pytest.mark.parametrize("stem2d", [[], [4, 8]])
def test_tc_resnet_builds_and_its_tflite_export_answers_like_keras(stem2d):
    from kws.bundle import tflite_scores, to_tflite
    from kws.models import INPUT_NAME, build_model

    x = np.random.default_rng(0).standard_normal((6, 51, 40)).astype(np.float32)
    model = build_model({**TC, "stem2d": stem2d}, (51, 40), 12, x)
    assert model.input.name.startswith(INPUT_NAME) and model.output.shape[-1] == 12
    keras_scores = model.predict(x[..., None], verbose=0)
    np.testing.assert_allclose(keras_scores.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(tflite_scores(to_tflite(model), x[..., None]), keras_scores, atol=1e-4)


def test_tc_resnet_stem2d_halves_the_coefficients_per_layer():
    from kws.models import build_model

    model = build_model({**TC, "stem2d": [4, 8]}, (51, 40), 12)
    reshape = next(layer for layer in model.layers if layer.__class__.__name__ == "Reshape")
    assert tuple(reshape.output.shape[1:]) == (51, 10 * 8)  # 40 -> 20 -> 10 coefficients, 8 channels each
