"""Decoding under budgets (issue 22, items 2 and 5): only known audio containers reach ffmpeg,
ffmpeg runs under a CPU and wall budget with a bound on concurrent decodes, WAV never waits for
it, and a full TMPDIR or another OS error never turns into a 500. Real ffmpeg, real uploads."""

from __future__ import annotations

import gzip
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from kws import sniff
from kws.audio import Decoder, decode
from kws.errors import DecoderBusyError, UnsupportedAudioError
from kws.ffmpeg import Limits
from kws.serving.openapi import document
from tests.support.openapi import assert_documented
from tests.support.processes import ApiProcess
from tests.support.serving import assert_error, decoders_taken, ffmpeg_convert, post_audio


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def amr_bytes(seconds: float = 1.0) -> bytes:
    """AMR-NB, 12.2 kbit/s frames (header 0x3C + 31 bytes) of zeros: what a phone memo file is made of
    (this ffmpeg build has no AMR encoder)."""
    return b"#!AMR\n" + (b"\x3c" + bytes(31)) * int(seconds * 50)


@pytest.fixture(scope="module")
def gzip_zeros() -> bytes:
    """The issue's attack: gzip-compressed zeros (not audio; ffmpeg alone probes it for seconds)."""
    return gzip.compress(b"\0" * (256 * 1024 * 1024), compresslevel=9)


@pytest.fixture(scope="module")
def formats(tmp_path_factory, clips) -> dict[str, bytes]:
    src = clips["one"][0]
    out = tmp_path_factory.mktemp("containers")
    made = {}
    for ext, fmt, args in [("webm", "matroska", ["-c:a", "libopus"]), ("m4a", "mov", ["-c:a", "aac"]),
                           ("ogg", "ogg", ["-c:a", "libvorbis"]), ("flac", "flac", []), ("wav", "wav", []),
                           ("mp3", "mp3", ["-c:a", "libmp3lame"]), ("aac", "aac", ["-c:a", "aac", "-f", "adts"]),
                           ("aiff", "aiff", []), ("caf", "caf", []), ("wma", "asf", ["-c:a", "wmav2"]),
                           ("au", "au", []), ("mkv", "matroska", ["-c:a", "pcm_f32le"])]:
        made[fmt + "/" + ext] = ffmpeg_convert(src, out / f"clip.{ext}", *args).read_bytes()
    made["amr/amr"] = amr_bytes()
    return made


@pytest.fixture(scope="module")
def spinner(tmp_path_factory) -> bytes:
    """30 KB that costs ffmpeg a second or more of CPU: a minute of 8-channel 384 kHz FLAC silence in
    Matroska (a real, valid file; the cost is in decoding, downmixing and resampling it)."""
    ffmpeg = shutil.which("ffmpeg") or pytest.skip("ffmpeg is not installed")
    out = tmp_path_factory.mktemp("spin") / "spin.mkv"
    subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=384000:cl=7.1",
                    "-t", "60", "-c:a", "flac", str(out)], check=True, capture_output=True, timeout=120)
    return out.read_bytes()


def test_containers_are_recognised_by_their_first_bytes(formats, gzip_zeros):
    for name, data in formats.items():
        assert sniff.container(data) == name.split("/")[0], name
    id3 = b"ID3\x04\x00\x00\x00\x00\x00\x05" + b"\0" * 5
    assert sniff.container(id3 + formats["mp3/mp3"]) == "mp3"
    assert sniff.container(id3 + formats["aac/aac"]) == "aac"
    assert sniff.container(id3 + formats["flac/flac"]) == "flac"
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("a.txt", "hello")
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
    for other in (gzip_zeros, zipped.getvalue(), png, b"%PDF-1.7\n", b"hello world" * 10, b"\0" * 4096, b"\xff",
                  b"ID3", b"RIFF\0\0\0\0AVI LIST"):
        assert sniff.container(other) is None, other[:16]


def test_gzip_of_zeros_is_refused_at_once_without_ffmpeg(gzip_zeros):
    cpu0, t0 = _children_cpu(), time.perf_counter()
    with pytest.raises(UnsupportedAudioError, match="not audio"):
        decode(gzip_zeros)
    assert time.perf_counter() - t0 < 0.5
    assert _children_cpu() == cpu0  # no ffmpeg/ffprobe ran at all


def test_every_known_container_still_decodes(formats):
    for name, data in formats.items():
        audio = decode(data)
        assert audio.duration_s == pytest.approx(1.0, abs=0.1), name


def test_an_input_that_makes_ffmpeg_spin_is_stopped_by_the_cpu_budget(spinner):
    limits = Limits(cpu_s=0.2)
    cpu0, t0 = _children_cpu(), time.perf_counter()
    with pytest.raises(UnsupportedAudioError, match="CPU budget"):
        Decoder(limits).decode(spinner)
    spent = _children_cpu() - cpu0
    # the poll interval and the kill add a little to the budget; an unbounded decode costs ~1 s or more
    assert spent < limits.cpu_s + 0.15, spent
    assert time.perf_counter() - t0 < 5


def test_busy_decoders_answer_busy_but_wav_never_waits(formats):
    dec = Decoder(Limits(concurrency=1, wait_s=0.2))
    with dec.gate.slot():  # another request's decode holds the only slot
        t0 = time.perf_counter()
        with pytest.raises(DecoderBusyError) as err:
            dec.decode(formats["matroska/webm"])
        assert 0.15 < time.perf_counter() - t0 < 1.5
        assert err.value.status == 503 and err.value.retry_after_s >= 1
        t0 = time.perf_counter()
        assert dec.decode(formats["wav/wav"]).duration_s == pytest.approx(1.0, abs=0.05)
        assert time.perf_counter() - t0 < 0.5
    assert dec.decode(formats["matroska/webm"]).duration_s == pytest.approx(1.0, abs=0.1)


def test_the_service_answers_busy_with_retry_after(bundle, formats):
    from kws.serving.app import create_app

    app = create_app({"model_dir": str(bundle), "preload": False, "ffmpeg_concurrency": 1, "ffmpeg_wait_s": 0.1})
    client = app.test_client()
    assert client.post("/predict", data=formats["wav/wav"], content_type="audio/wav").status_code == 200
    with decoders_taken(app):
        resp = client.post("/predict", data=formats["matroska/webm"], content_type="audio/webm")
        assert resp.status_code == 503 and resp.json["error"]["code"] == "busy", resp.json
        assert int(resp.headers["Retry-After"]) >= 1
        assert_documented(document(), "POST", "/predict", resp.status_code, resp.json, resp.headers)
        assert client.post("/predict", data=formats["wav/wav"], content_type="audio/wav").status_code == 200
    assert client.post("/predict", data=formats["matroska/webm"], content_type="audio/webm").status_code == 200


@pytest.fixture()
def full_tmpdir(tmp_path) -> Path:
    """A 64 KB tmpfs, filled up (root only: skipped otherwise); unmounted afterwards."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        try:
            with open(mnt / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass  # full
        with pytest.raises(OSError):
            (mnt / "probe").write_bytes(b"\0" * 8192)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_tmpdir_does_not_break_decoding(tmp_path, full_tmpdir, bundle, formats):
    """The issue: WebM, M4A, AMR and undecodable uploads got 500 + an Errno 28 traceback."""
    with ApiProcess(bundle, tmp_path / "srv", env={"TMPDIR": str(full_tmpdir), "KWS_RELOAD_S": "0"}) as api:
        for name in ("matroska/webm", "mov/m4a", "matroska/mkv", "ogg/ogg", "mp3/mp3"):
            resp = post_audio(api.url, formats[name], "clip." + name.split("/")[1])
            assert resp.status_code == 200, (name, resp.text)
        resp = post_audio(api.url, amr_bytes(), "memo.amr")
        assert resp.status_code == 200 and resp.json()["sample_rate"] == 8000, resp.text
        assert_error(post_audio(api.url, b"\x1aE\xdf\xa3" + b"junk" * 1000, "x.webm"), 415, "unsupported_media_type")
        assert_error(post_audio(api.url, b"junk" * 1000, "x.bin"), 415, "unsupported_media_type")
    log = api.log.read_text()
    assert "Traceback" not in log and "Errno 28" not in log, log[-3000:]


def test_an_os_error_while_staging_is_a_503_not_a_traceback(tmp_path, bundle, formats):
    """A real OS error in the real code path: the server process may write no file over 4 KB
    (RLIMIT_FSIZE), so staging an M4A for ffmpeg fails with EFBIG."""
    prlimit = shutil.which("prlimit") or pytest.skip("prlimit (util-linux) is not installed")
    script = tmp_path / "run.py"
    script.write_text(
        "import json, sys\n"
        "from kws.serving.app import create_app\n"
        f"app = create_app({{'model_dir': {str(bundle)!r}, 'preload': False}})\n"
        "c = app.test_client()\n"
        "ok = c.post('/predict', data=open(sys.argv[1], 'rb').read(), content_type='audio/wav')\n"
        "r = c.post('/predict', data=open(sys.argv[2], 'rb').read(), content_type='audio/mp4')\n"
        "print(json.dumps([ok.status_code, r.status_code, r.json, r.headers.get('Retry-After')]))\n")
    (tmp_path / "clip.wav").write_bytes(formats["wav/wav"])
    (tmp_path / "clip.m4a").write_bytes(formats["mov/m4a"])
    assert len(formats["mov/m4a"]) > 4096
    proc = subprocess.run([prlimit, "--fsize=4096", sys.executable, str(script), str(tmp_path / "clip.wav"),
                           str(tmp_path / "clip.m4a")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ok, status, body, retry_after = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (ok, status) == (200, 503), body
    assert body["error"]["code"] == "storage_unavailable" and "retry" in body["error"]["message"]
    assert_documented(document(), "POST", "/predict", status, body,
                      {} if retry_after is None else {"Retry-After": retry_after})
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
