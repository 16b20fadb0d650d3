"""The ORIGINAL project's way of serving, re-implemented as the baseline of ``bench_serving.py``.

Per request (as the tutorial's ``keyword_spotting_service.py`` + Flask ``server.py`` did):

1. save the upload to a file,
2. ``librosa.load(path)`` at librosa's default 22.05 kHz (resampling the 16 kHz clip),
3. keep the first second (22050 samples),
4. ``librosa.feature.mfcc(y, sr, n_mfcc=13, n_fft=2048, hop_length=512).T`` -> (44, 13),
5. add batch/channel axes, ``model.predict(x)`` with the Keras model, argmax -> keyword,
6. delete the file, answer ``{"keyword": ...}``.

Deliberate differences, none of which changes the compute being measured:

* uploads are saved in a PRIVATE temporary directory (``tempfile.mkdtemp``, mode 0700) with a
  unique name, not as ``str(random.randint(0, 100000))`` in the working directory (that was a
  security/race bug; we measure compute, not reproduce the bug);
* a clip shorter than 1 s is zero-padded to 22050 samples (the original left ``MFCCs``
  unbound and failed with a 500 for it);
* ``model.predict(x, verbose=0)`` (the original printed a Keras progress bar per request);
* the model is the project's ``cnn_seed`` (the original CNN: 3x Conv/BN/MaxPool, Dense 64,
  Dropout, softmax) from :func:`kws.models.build_model`, which also has a tiny input
  ``Normalization`` layer the original lacked; its weights are random or briefly trained
  (latency does not depend on the weights);
* the server has a ``GET /ready`` (the benchmark harness waits on it) and stops cleanly on SIGTERM.

Run as a server (``bench_serving.py`` does this through :class:`tests.support.processes.ApiProcess`,
with this folder on ``PYTHONPATH``)::

    PYTHONPATH=benchmarks .venv/bin/python -m legacy_serving --model-dir DIR [--port 8000 --threads 4]

``DIR`` holds ``model.keras`` and ``mapping.json`` (see :func:`build_legacy_model`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SAMPLE_RATE = 22050  # librosa.load's default
SAMPLES_TO_CONSIDER = 22050  # 1 s
N_MFCC, N_FFT, HOP_LENGTH = 13, 2048, 512
INPUT_SHAPE = (44, 13)  # 1 + 22050 // 512 frames x 13 coefficients
MODEL_FILE, MAPPING_FILE = "model.keras", "mapping.json"

log = logging.getLogger("legacy_serving")


# --------------------------------------------------------------------------- the original compute
def legacy_mfcc(path: str | Path) -> np.ndarray:
    """``librosa.load`` (22.05 kHz) -> first second -> 13 MFCCs, ``(44, 13)``."""
    import librosa

    signal_, sr = librosa.load(str(path))
    if len(signal_) < SAMPLES_TO_CONSIDER:  # the original failed here; we pad (see the module doc)
        signal_ = np.pad(signal_, (0, SAMPLES_TO_CONSIDER - len(signal_)))
    signal_ = signal_[:SAMPLES_TO_CONSIDER]
    mfccs = librosa.feature.mfcc(y=signal_, sr=sr, n_mfcc=N_MFCC, n_fft=N_FFT, hop_length=HOP_LENGTH)
    return mfccs.T


class LegacyKeywordSpotter:
    """The original ``_Keyword_Spotting_Service``: a Keras model + mapping, ``predict(file_path)``."""

    def __init__(self, model_dir: str | Path, upload_dir: str | Path | None = None):
        import keras

        model_dir = Path(model_dir)
        self.model = keras.models.load_model(str(model_dir / MODEL_FILE))
        self.mapping: list[str] = json.loads((model_dir / MAPPING_FILE).read_text())["mapping"]
        self._own_upload_dir = upload_dir is None
        self.upload_dir = Path(upload_dir) if upload_dir else Path(tempfile.mkdtemp(prefix="kws-legacy-uploads-"))

    def predict(self, file_path: str | Path) -> str:
        mfccs = legacy_mfcc(file_path)
        x = mfccs[np.newaxis, ..., np.newaxis]  # (1, 44, 13, 1)
        predictions = self.model.predict(x, verbose=0)
        return self.mapping[int(np.argmax(predictions))]

    def save_upload(self, write) -> str:
        """A fresh private file for one upload; ``write(path)`` fills it (FileStorage.save or bytes)."""
        fd, path = tempfile.mkstemp(dir=self.upload_dir, suffix=".wav")
        os.close(fd)
        write(path)
        return path

    def predict_bytes(self, data: bytes) -> str:
        """The whole per-request path from the uploaded bytes: save, predict, delete."""
        path = self.save_upload(lambda p: Path(p).write_bytes(data))
        try:
            return self.predict(path)
        finally:
            os.remove(path)

    def close(self) -> None:
        if self._own_upload_dir:
            shutil.rmtree(self.upload_dir, ignore_errors=True)


def build_legacy_model(out_dir: str | Path, clips: Sequence[Path], epochs: int = 0, seed: int = 0) -> dict:
    """Write ``out_dir/model.keras`` (cnn_seed on (44, 13) legacy MFCCs) + ``mapping.json``.

    The labels are the clips' folder names (as the original mapping was); the input
    normalization is adapted on the clips' legacy MFCCs; ``epochs`` > 0 trains briefly on them.
    """
    import keras

    from kws.models import build_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mapping = sorted({Path(c).parent.name for c in clips})
    x = np.stack([legacy_mfcc(c) for c in clips]).astype(np.float32)
    y = np.asarray([mapping.index(Path(c).parent.name) for c in clips])
    keras.utils.set_random_seed(seed)
    model = build_model({"name": "cnn_seed", "dropout": 0.3, "l2": 0.001}, INPUT_SHAPE, len(mapping), x)
    if epochs > 0:
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        model.fit(x[..., None], y, epochs=epochs, batch_size=8, shuffle=True, verbose=0)
    model.save(out_dir / MODEL_FILE)
    (out_dir / MAPPING_FILE).write_text(json.dumps({"mapping": mapping}, indent=2) + "\n")
    return {"architecture": "cnn_seed", "input_shape": [*INPUT_SHAPE, 1], "labels": mapping,
            "params": int(model.count_params()), "train_epochs": epochs, "train_clips": len(clips),
            "weights": "briefly trained on the sample clips" if epochs > 0 else "random (normalization adapted)"}


# --------------------------------------------------------------------------- the original Flask app
def create_legacy_app(spotter: LegacyKeywordSpotter):
    from flask import Flask, jsonify, request

    app = Flask(__name__)

    @app.route("/predict", methods=["POST"])
    def predict():
        audio_file = request.files["file"]
        path = spotter.save_upload(audio_file.save)
        try:
            keyword = spotter.predict(path)
        finally:
            os.remove(path)
        return jsonify({"keyword": keyword})

    @app.route("/ready", methods=["GET"])
    def ready():  # for the benchmark harness only; the original had no such route
        return jsonify({"status": "ready"})

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The original project's Flask keyword service, on Waitress.")
    p.add_argument("--model-dir", default=os.environ.get("KWS_MODEL_DIR"), help="model.keras + mapping.json (KWS_MODEL_DIR)")
    p.add_argument("--host", default=os.environ.get("KWS_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("KWS_PORT", "8000")))
    p.add_argument("--threads", type=int, default=int(os.environ.get("KWS_THREADS", "4")), help="Waitress threads")
    args = p.parse_args(argv)
    if not args.model_dir:
        p.error("--model-dir (or KWS_MODEL_DIR) is required")
    from waitress import create_server

    from kws.logs import setup_logging
    from kws.serving.server import run_until_stopped
    import _common  # noqa: F401 -- puts the repository root on sys.path, for tests.support
    from tests.support.bundles import wav_bytes

    setup_logging()

    spotter = LegacyKeywordSpotter(args.model_dir)
    spotter.predict_bytes(wav_bytes(np.zeros(16000, np.float32)))  # builds Keras' predict function once, before threads race for it
    app = create_legacy_app(spotter)
    server = create_server(app, host=args.host, port=args.port, threads=args.threads, ident="legacy")
    log.info("legacy service ready on http://%s:%d (%d threads)", args.host, args.port, args.threads)
    try:
        run_until_stopped(server)
    finally:
        spotter.close()
    log.info("legacy service stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
