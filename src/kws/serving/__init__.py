"""The keyword-spotting HTTP service: Flask app (``app``/``api``), model service
(``predictor``), Prometheus metrics, OpenAPI document and the Waitress entry point (``server``).

Nothing heavy is imported here: ``kws.serving.server`` starts without TensorFlow when the
TFLite runtime is used.
"""

from __future__ import annotations

__all__ = ["create_app"]


def create_app(config: dict | None = None):
    """Build the Flask application (see :func:`kws.serving.app.create_app`)."""
    from kws.serving.app import create_app as _create_app

    return _create_app(config)
