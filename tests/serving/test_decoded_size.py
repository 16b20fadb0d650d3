"""A budget on what an in-memory decode expands to (issue 22): a few KB of compressed silence can
claim minutes of 8-channel 384 kHz audio. Channels x frames (KWS_MAX_DECODED_SAMPLES) and the
duration (KWS_MAX_DURATION_S) are checked from the header before any sample is decoded; a file
whose header does not say its length (a FLAC written to a pipe) is decoded only up to the budget.
Real files from real encoders, through the real Flask app; tracemalloc sees numpy's buffers."""

from __future__ import annotations

import shutil
import subprocess
import tracemalloc

import pytest
import soundfile as sf


MB = 1024 * 1024


def _ffmpeg(*args: str) -> bytes:
    ffmpeg = shutil.which("ffmpeg") or pytest.skip("ffmpeg is not installed")
    return subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", *args], check=True, capture_output=True,
                          timeout=120).stdout


def _silence(layout: str, rate: int, seconds: float, *out: str) -> bytes:
    return _ffmpeg("-f", "lavfi", "-i", f"anullsrc=r={rate}:cl={layout}", "-t", str(seconds), *out, "pipe:1")


def _to_file(tmp_path, name: str, *args: str) -> bytes:
    """Written to a file, so the encoder goes back and puts the length in the header."""
    _ffmpeg("-y", *args, str(tmp_path / name))
    return (tmp_path / name).read_bytes()


@pytest.fixture(scope="module")
def app(bundle):
    from kws.serving.app import create_app

    return create_app({"model_dir": str(bundle), "preload": False})


def assert_error(resp, status: int, code: str) -> dict:
    """The JSON error of a Flask test-client answer."""
    body = resp.get_json(silent=True)
    assert resp.status_code == status and body and body["error"]["code"] == code, (resp.status_code, resp.data[:500])
    return body


def _post(app, data: bytes, ctype: str = "audio/flac"):
    """The answer and the most memory Python and numpy held while the app answered."""
    client = app.test_client()
    tracemalloc.start()
    try:
        resp = client.post("/predict", data=data, content_type=ctype)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return resp, peak


def test_a_header_that_claims_too_much_is_refused_before_decoding(app, tmp_path):
    wide = _to_file(tmp_path, "wide.flac", "-f", "lavfi", "-i", "anullsrc=r=384000:cl=7.1", "-t", "10")
    long_flac = _to_file(tmp_path, "long.flac", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "600")
    long_mp3 = _to_file(tmp_path, "long.mp3", "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono", "-t", "600",
                        "-c:a", "libmp3lame", "-b:a", "32k")
    assert len(wide) < 100_000  # 10 s of 8 channels at 384 kHz: 30,720,000 samples, 123 MB as float32
    resp, peak = _post(app, wide)
    body = assert_error(resp, 413, "audio_too_large")
    assert "8 channels" in body["error"]["message"] and "384,000 Hz" in body["error"]["message"]
    assert "30,720,000 samples" in body["error"]["message"] and "12,000,000" in body["error"]["message"]
    assert peak < 8 * MB, peak  # nothing decoded
    for data, ctype in ((long_flac, "audio/flac"), (long_mp3, "audio/mpeg")):
        resp, peak = _post(app, data, ctype)
        body = assert_error(resp, 422, "audio_too_long")
        assert "600.0 s long" in body["error"]["message"] and "60 s" in body["error"]["message"]
        assert peak < 8 * MB, (ctype, peak)


def test_a_flac_of_unknown_length_is_decoded_up_to_the_budget(app, clips):
    """FLAC written to a pipe has no length in its header (libsndfile reports 2**63 - 1 frames):
    a normal clip is served, too much is refused once the budget is decoded, not before."""
    clip = _ffmpeg("-i", str(clips["one"][0]), "-f", "flac", "pipe:1")
    resp, _ = _post(app, clip)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["duration_s"] == pytest.approx(sf.info(str(clips["one"][0])).duration, abs=0.01)

    resp, peak = _post(app, _silence("mono", 16000, 600, "-f", "flac"))
    body = assert_error(resp, 422, "audio_too_long")
    assert body["error"]["message"] == "audio is longer than the maximum of 60 s"
    assert peak < 16 * MB, peak  # about 60 s of mono 16 kHz float32, not 600 s

    resp, peak = _post(app, _silence("7.1", 384000, 10, "-f", "flac"))
    body = assert_error(resp, 413, "audio_too_large")
    assert "more than the 12,000,000 samples" in body["error"]["message"]
    assert peak < 12_000_000 * 4 + 16 * MB, peak  # the budget (float32), not the 123 MB it would decode to


def test_the_budget_is_the_setting_and_common_audio_is_within_it(bundle, clips, tmp_path):
    from kws.serving.app import create_app

    stereo_96k = _to_file(tmp_path, "hi.flac", "-i", str(clips["one"][0]), "-ac", "2", "-ar", "96000",
                          "-af", "apad=whole_dur=5")
    default = create_app({"model_dir": str(bundle), "preload": False})
    resp, _ = _post(default, stereo_96k)
    assert resp.status_code == 200 and resp.get_json()["channels"] == 2, resp.get_json()
    small = create_app({"model_dir": str(bundle), "preload": False, "max_decoded_samples": 500_000})
    body = assert_error(_post(small, stereo_96k)[0], 413, "audio_too_large")  # 2 x 480,000 frames
    assert "960,000 samples" in body["error"]["message"] and "500,000" in body["error"]["message"]
    mono_16k = clips["one"][0].read_bytes()
    assert _post(small, mono_16k, "audio/wav")[0].status_code == 200
