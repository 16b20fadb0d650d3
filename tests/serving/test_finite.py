"""No non-finite number ever reaches JSON (issue 22, item 3): NaN/Inf samples are a 422
``invalid_audio``; huge finite samples (float formats hold any magnitude) are scaled down before
anything squares them; tiny ones are silence. Every float format libsndfile writes, and float PCM
in Matroska (decoded by ffmpeg)."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import soundfile as sf

from kws.audio import decode, load_file
from kws.serving.app import create_app
from tests.support.serving import ffmpeg_convert

#: (libsndfile format, subtype) pairs that hold float samples
FLOAT_FORMATS = [(fmt, sub) for fmt in ("WAV", "AIFF", "AU", "CAF", "W64", "RF64")
                 for sub in ("FLOAT", "DOUBLE") if sf.check_format(fmt, sub)]


def _strict(body: bytes):
    def refuse(name):
        raise ValueError(f"{name} in the answer")

    return json.loads(body, parse_constant=refuse)


@pytest.fixture(scope="module")
def client(bundle):
    return create_app({"model_dir": str(bundle), "preload": False}).test_client()


@pytest.fixture(scope="module")
def clip(clips) -> np.ndarray:
    return load_file(clips["two"][0], 16000).astype(np.float64)


def _encode(samples: np.ndarray, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, 16000, format=fmt, subtype=subtype)
    return buf.getvalue()


def _cases(clip: np.ndarray, subtype: str) -> dict[str, np.ndarray]:
    big = 1e300 if subtype == "DOUBLE" else 1e30  # float32 tops out near 3.4e38
    nan, inf = clip.copy(), clip.copy()
    nan[100] = np.nan
    inf[200] = -np.inf
    return {"huge": clip * 1e19, "huger": clip * big, "tiny": clip * 1e-30, "nan": nan, "inf": inf}


def _post(client, data: bytes):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the "RuntimeWarning: overflow" is gone
        return client.post("/predict?top_k=5", data=data, content_type="application/octet-stream")


def _check(client, data: bytes, case: str, reference: dict, where: str) -> None:
    resp = _post(client, data)
    body = _strict(resp.data)
    if case in ("nan", "inf"):
        assert (resp.status_code, body["error"]["code"]) == (422, "invalid_audio"), (where, body)
    elif case == "tiny":
        assert (resp.status_code, body["error"]["code"]) == (422, "silent_audio"), (where, body)
    else:  # scaled to a peak of 1: the same answer as the clip at full scale
        assert resp.status_code == 200, (where, body)
        assert body["keyword"] == reference["keyword"], where
        got = {s["label"]: s["score"] for s in body["scores"]}
        want = {s["label"]: s["score"] for s in reference["scores"]}
        assert got == pytest.approx(want, abs=1e-4), where


def test_float_formats_read_by_libsndfile(client, clip):
    assert len(FLOAT_FORMATS) >= 6, FLOAT_FORMATS
    reference = _strict(_post(client, _encode(clip / np.abs(clip).max(), "WAV", "FLOAT")).data)
    for fmt, subtype in FLOAT_FORMATS:
        for case, samples in _cases(clip, subtype).items():
            _check(client, _encode(samples, fmt, subtype), case, reference, f"{fmt}/{subtype}/{case}")


def test_float_pcm_through_ffmpeg(client, clip, tmp_path):
    """Float PCM in Matroska: ffmpeg decodes it, the same rules apply to what it outputs."""
    reference = _strict(_post(client, _encode(clip / np.abs(clip).max(), "WAV", "FLOAT")).data)
    for codec, subtype in (("pcm_f32le", "FLOAT"), ("pcm_f64le", "DOUBLE")):
        for case, samples in _cases(clip, subtype).items():
            if case == "huger" and subtype == "DOUBLE":
                continue  # ffmpeg itself outputs float32: 1e300 cannot come out finite (tested below)
            src = tmp_path / f"{case}.wav"
            src.write_bytes(_encode(samples, "WAV", subtype))
            mkv = ffmpeg_convert(src, tmp_path / f"{case}-{codec}.mkv", "-c:a", codec).read_bytes()
            _check(client, mkv, case, reference, f"mkv/{codec}/{case}")
    src = tmp_path / "beyond.wav"
    src.write_bytes(_encode(clip * 1e300, "WAV", "DOUBLE"))
    resp = _post(client, ffmpeg_convert(src, tmp_path / "beyond.mkv", "-c:a", "pcm_f64le").read_bytes())
    assert (resp.status_code, _strict(resp.data)["error"]["code"]) == (422, "invalid_audio")


def test_huge_samples_are_scaled_not_clipped(clip):
    audio = decode(_encode(clip * 1e19, "WAV", "FLOAT"))
    np.testing.assert_allclose(audio.samples, (clip / np.abs(clip).max()).astype(np.float32), atol=1e-6)
    assert audio.samples.dtype == np.float32 and np.abs(audio.samples).max() == pytest.approx(1.0)


def test_the_json_encoder_refuses_non_finite_numbers(bundle):
    app = create_app({"model_dir": str(bundle), "preload": False})
    with app.app_context():
        with pytest.raises(ValueError):
            app.json.dumps({"confidence": float("nan")})
        assert app.json.dumps({"a": 1.5, "b": [2]}) == '{"a": 1.5, "b": [2]}'
