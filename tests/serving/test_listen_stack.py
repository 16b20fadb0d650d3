"""Live listening through the real nginx and Waitress: ``kws-listen --file`` prints what ``/predict``
finds in the same file, its errors, sessions pinned to one of two replicas by nginx's hash, and
SIGTERM answering the chunks already received."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.support.nginx import NginxProcess
from tests.support.processes import ApiProcess, free_port
from tests.support.bundles import long_recording, wav_bytes
from tests.support.listen import L16, chunks, quantized, to_s16
from tests.support.nginx import nginx_or_skip
from tests.support.serving import metric_value, post_audio

pytestmark = pytest.mark.slow


def _listen(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kws.listen", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def talk(tmp_path_factory, spoken, sample):
    """13 s: the three keywords and two other words (_unknown_ to the tiny model), ~2.5 s apart."""
    words = [(1.0, spoken["one"]), (3.5, sample / "five" / sorted(p.name for p in (sample / "five").glob("*.wav"))[0]),
             (6.0, spoken["two"]), (8.5, sample / "eight" / sorted(p.name for p in (sample / "eight").glob("*.wav"))[0]),
             (11.0, spoken["three"])]
    path = tmp_path_factory.mktemp("talk") / "talk.wav"
    path.write_bytes(wav_bytes(quantized(long_recording(words, duration_s=13.0))))
    return path


def test_listen_file_prints_the_detections_of_predict(base, talk):
    want = post_audio(base, talk.read_bytes(), talk.name).json()["detections"]
    assert [d["keyword"] for d in want] == ["one", "two", "three"]  # the other words are not keywords
    res = _listen("--url", base, "--file", str(talk), "--fast", "--json")
    assert res.returncode == 0, res.stderr
    got = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(d["keyword"], d["start_s"], d["end_s"]) for d in got] == [
        (d["keyword"], d["start_s"], d["end_s"]) for d in want]
    for g, w in zip(got, want):
        assert g["confidence"] == pytest.approx(w["confidence"], abs=1e-4)
        assert g["time_s"] == pytest.approx(w["start_s"] + 0.5)
    assert "session open (kws-tiny vtest-1" in res.stderr and "13.0 s of audio streamed" in res.stderr

    # Real time (the default): the same lines, printed as the words pass, in about the recording's length.
    t0 = time.monotonic()
    res = _listen("--url", base + "/api/", "--file", str(talk))
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [f"{d['start_s'] + 0.5:7.2f} s  {d['keyword']}  {d['confidence']:.2f}"
                                       for d in got]
    assert 13.0 <= took < 30, took


def test_listen_errors_are_clear(base, api, talk, tmp_path):
    down = _listen("--url", f"http://127.0.0.1:{free_port()}/", "--file", str(talk), "--fast")
    assert down.returncode == 2 and "cannot reach the kws service" in down.stderr and "Traceback" not in down.stderr
    nomic = _listen("--url", base, "--device", "999")  # no such input device, on any machine
    assert nomic.returncode == 2 and "no microphone" in nomic.stderr.lower() and "Traceback" not in nomic.stderr, \
        nomic.stderr
    missing = _listen("--url", base, "--file", str(tmp_path / "nope.wav"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 100)
    refused = _listen("--url", base, "--file", str(bad), "--fast")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    wrong = _listen("--url", base, "--file", str(talk), "--threshold", "3")
    assert wrong.returncode == 2 and "--threshold" in wrong.stderr


def _stream(url: str, audio, results: list, stop: threading.Event | None = None) -> None:
    """One client: open a session and post 200 ms chunks one after another; every outcome is kept."""
    with requests.Session() as http:
        try:
            sid = http.post(f"{url}/stream", timeout=30).json()["session"]
            for seq, chunk in enumerate(chunks(audio, 200)):
                if stop is not None and stop.is_set():
                    return
                r = http.post(f"{url}/stream/{sid}?seq={seq}", data=to_s16(chunk, ">"),
                              headers={"Content-Type": L16}, timeout=60)
                results.append((r.status_code, r.json().get("detections", r.json().get("error"))))
        except requests.ConnectionError:
            results.append(("refused", None))


def test_two_replicas_every_chunk_reaches_its_session(tmp_path, bundle, spoken):
    nginx_or_skip()
    audio = quantized(long_recording([(1.0, spoken["one"]), (3.0, spoken["three"])], duration_s=5.0))
    a = ApiProcess(bundle, tmp_path / "a", env={"KWS_THREADS": "4"})
    b = ApiProcess(bundle, tmp_path / "b", env={"KWS_THREADS": "4"})
    with a, b, NginxProcess(tmp_path / "nginx", upstream=f"127.0.0.1:{a.port} 127.0.0.1:{b.port}") as ngx:
        outcomes = [[] for _ in range(12)]
        threads = [threading.Thread(target=_stream, args=(ngx.url + ("/api" if i % 2 else ""), audio, out))
                   for i, out in enumerate(outcomes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        per_replica = [metric_value(requests.get(f"{p.url}/metrics", timeout=10).text, "kws_stream_chunks_total")
                       for p in (a, b)]
    for out in outcomes:
        assert [s for s, _ in out] == [200] * 25, out  # never a chunk on the replica without its session
        assert [d["keyword"] for _, dets in out for d in dets] == ["one", "three"]
    assert sum(per_replica) == 12 * 25 and min(per_replica) > 0, per_replica  # both replicas hold sessions


def test_sigterm_answers_the_chunks_received_then_exits_0(tmp_path, bundle, clips):
    audio = quantized(long_recording([(1.0, clips["two"][0])], duration_s=60.0))
    api = ApiProcess(bundle, tmp_path / "api", env={"KWS_THREADS": "8", "KWS_GRACE_S": "30"})
    with api:
        outcomes = [[] for _ in range(6)]
        threads = [threading.Thread(target=_stream, args=(api.url, audio, out)) for out in outcomes]
        for t in threads:
            t.start()
        while min(len(o) for o in outcomes) < 5:  # every session is streaming
            time.sleep(0.05)
        api.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        code = api.proc.wait(60)
    log = api.log.read_text()
    assert code == 0 and "drained: every request received was answered" in log and "Traceback" not in log
    for out in outcomes:
        statuses = [s for s, _ in out]
        # answered until the socket closed, then refused: never a 5xx, a cut answer or a lost session
        assert statuses[-1] == "refused" and set(statuses[:-1]) == {200} and len(statuses) >= 6, statuses
