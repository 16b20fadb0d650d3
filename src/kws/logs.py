"""The single logging configuration for every kws entry point."""

from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_configured = False


def setup_logging(level: str | int | None = None) -> None:
    """Configure the root logger once; ``KWS_LOG_LEVEL`` overrides the default INFO."""
    global _configured
    level = level or os.environ.get("KWS_LOG_LEVEL", "INFO")
    if _configured:
        logging.getLogger().setLevel(level)
        return
    logging.basicConfig(level=level, format=_FORMAT)
    # Third-party libraries that are chatty at INFO.
    for noisy in ("absl", "tensorflow", "h5py", "numba", "matplotlib", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _configured = True
