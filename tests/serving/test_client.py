"""``kws-predict`` (the installed console script) as a subprocess against the real nginx -> Waitress stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.bundles import long_recording, wav_bytes
from tests.support.processes import free_port
from tests.support.serving import post_audio

LABELS = ["_silence_", "_unknown_", "one", "two", "three"]
LINE = "{name}: {keyword} (confidence {confidence:.2f})"


def kws_predict(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "kws-predict"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "kws.client"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "KWS_URL": "http://127.0.0.1:9/"})


@pytest.fixture(scope="module")
def three_clips(clips) -> list[Path]:
    return [clips[w][0] for w in ("one", "two", "three")]


def test_one_line_per_file_with_the_right_keyword(base, three_clips):
    res = kws_predict(*three_clips, "--url", base)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 3, res.stdout
    for line, path in zip(lines, three_clips):
        want = post_audio(base, path.read_bytes(), path.name).json()
        assert want["keyword"] == path.parent.name
        assert line == LINE.format(name=path, **want)
    assert res.stderr == ""


def test_json_lines(base, three_clips):
    res = kws_predict("--json", "--top-k", "5", "--url", base.removeprefix("http://"), *three_clips)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 3
    for line, path in zip(lines, three_clips):
        body = json.loads(line)
        assert body["file"] == str(path)
        assert body["keyword"] == path.parent.name
        assert sorted(s["label"] for s in body["scores"]) == sorted(LABELS)  # --top-k 5 was sent
        assert body["model"]["name"] == "kws-tiny" and body["request_id"]


def test_long_audio_lists_detections(base, clips, tmp_path):
    path = tmp_path / "long.wav"
    path.write_bytes(wav_bytes(long_recording([(1.0, clips["two"][0])], duration_s=4.0)))
    res = kws_predict(path, "--url", base + "/")
    assert res.returncode == 0, res.stderr
    want = post_audio(base, path.read_bytes(), path.name).json()
    assert want["detections"] and want["keyword"] == "two"
    head, *dets = res.stdout.splitlines()
    assert head == LINE.format(name=path, **want)
    assert len(dets) == len(want["detections"])
    for line, d in zip(dets, want["detections"]):
        assert line == (f"  {d['keyword']} at {d['start_s']:.2f}-{d['end_s']:.2f} s "
                        f"(confidence {d['confidence']:.2f})")


def test_bad_and_missing_files_among_good_ones(base, clips, tmp_path):
    bad = tmp_path / "x.wav"
    bad.write_bytes(b"just text, not audio\n" * 40)
    missing = tmp_path / "missing.wav"
    good1, good2 = clips["one"][0], clips["three"][0]
    res = kws_predict("--url", base, good1, bad, missing, good2)
    assert res.returncode == 1, (res.stdout, res.stderr)
    out = res.stdout.splitlines()
    assert len(out) == 2 and out[0].startswith(f"{good1}: one ") and out[1].startswith(f"{good2}: three ")
    err = post_audio(base, bad.read_bytes(), bad.name).json()["error"]
    assert f"kws-predict: {bad}: {err['message']} [{err['code']}]" in res.stderr.splitlines()
    assert f"kws-predict: {missing}: no such file" in res.stderr.splitlines()
    assert "Traceback" not in res.stderr

    # --json: the failures are JSON lines too, in order.
    res = kws_predict("--json", "--url", base, good1, bad, missing, good2)
    assert res.returncode == 1
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(good1), str(bad), str(missing), str(good2)]
    assert rows[0]["keyword"] == "one" and rows[3]["keyword"] == "three"
    assert rows[1]["status"] == 415 and rows[1]["error"] == err
    assert rows[2]["error"]["code"] == "file_not_found"


def test_unreachable_service_exits_2(clips):
    port = free_port()  # nothing listens there
    res = kws_predict("--url", f"http://127.0.0.1:{port}", clips["one"][0], clips["two"][0], timeout=60)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stdout == ""
    assert res.stderr.strip() == f"kws-predict: cannot reach the kws service at http://127.0.0.1:{port}/predict: is it running?"
    # $KWS_URL is the default (the helper sets it to the unused discard port 9).
    res = kws_predict(clips["one"][0], timeout=60)
    assert res.returncode == 2 and "cannot reach the kws service at http://127.0.0.1:9/predict" in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_arguments_exit_2(clips):
    for args in (["--threshold", "1.5", clips["one"][0]], ["--top-k", "0", clips["one"][0]], []):
        res = kws_predict(*args)
        assert res.returncode == 2, args
        assert res.stderr.startswith("usage: kws-predict") and "Traceback" not in res.stderr


def test_threshold_one_gives_unknown(base, all_clips):
    # Any clip whose best score is below 1.0 must come back as _unknown_ with --threshold 1.0.
    path = body = None
    for cand in all_clips:
        body = post_audio(base, cand.read_bytes(), cand.name).json()
        if body["confidence"] < 1.0 and body["keyword"] != "_unknown_":
            path = cand
            break
    assert path is not None, "every real clip scored exactly 1.0"
    plain = kws_predict("--json", "--url", base, path)
    assert json.loads(plain.stdout)["keyword"] == body["keyword"]
    res = kws_predict("--json", "--threshold", "1.0", "--url", base, path)
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout)
    assert row["keyword"] == "_unknown_" and row["threshold"] == 1.0
    assert row["confidence"] == body["confidence"]


def test_unreadable_file_is_reported_not_a_traceback(base, clips):
    # /proc/self/mem is a "regular file" whose first bytes cannot be read (EIO): an unreadable upload.
    unreadable = Path("/proc/self/mem")
    if not unreadable.is_file():
        pytest.skip("no /proc/self/mem on this system")
    res = kws_predict("--url", base, unreadable, clips["one"][0])
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert f"kws-predict: {unreadable}: cannot read the file: " in res.stderr
    assert res.stdout.startswith(f"{clips['one'][0]}: one ")  # the next file is still sent
