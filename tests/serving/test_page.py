"""The web page (nginx/html) driven in real headless Chromium through the real nginx -> Waitress stack.

Debian's ``/usr/bin/chromium`` is driven by Playwright (no downloaded browser). The microphone is
Chromium's fake capture device fed with a REAL Speech Commands clip
(``--use-file-for-fake-audio-capture``), so the recording path (getUserMedia -> MediaRecorder ->
WebM/Opus upload -> ffmpeg decode on the server) runs for real.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from tests.support.bundles import long_recording, wav_bytes
from tests.support.serving import metric_value, post_audio

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("KWS_CHROMIUM", "/usr/bin/chromium")
LABELS = ["_silence_", "_unknown_", "one", "two", "three"]
TIMEOUT_MS = 60_000
MIC_WORD = "three"


def pct(x: float) -> str:
    """The page's own formatting of a score (app.js ``pct``)."""
    return f"{100 * x:.1f}%"


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory, clips) -> Path:
    """A real clip as 48 kHz 16-bit mono WAV: what Chromium's fake audio capture plays (looped)."""
    import soundfile as sf

    from kws.audio import load_file, resample

    out = tmp_path_factory.mktemp("mic") / "mic.wav"
    sf.write(out, resample(load_file(clips[MIC_WORD][0], 16000), 16000, 48000), 48000, subtype="PCM_16")
    return out


@pytest.fixture(scope="module")
def browser(mic_wav):
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic_wav}",
        ])
        yield b
        b.close()


@pytest.fixture
def page(browser, base):
    """A fresh page of the site, with the model info loaded; fails the test on any page error."""
    ctx = browser.new_context()
    ctx.grant_permissions(["microphone"], origin=base)
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    pg.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
    pg.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    resp = pg.goto(base + "/")
    assert resp is not None and resp.status == 200
    pg.wait_for_function("() => document.getElementById('model-info').textContent.includes('labels')")
    pg.kws_errors = errors  # checked by the tests that expect a clean run
    yield pg
    ctx.close()


def wait_state(pg, *states: str) -> str:
    """Wait until #result's data-state is one of ``states`` (the page sets busy -> done|error)."""
    pg.wait_for_function("(states) => states.includes(document.getElementById('result').dataset.state)",
                         arg=list(states))
    return pg.get_attribute("#result", "data-state")


def shown_scores(pg) -> list[dict]:
    return pg.eval_on_selector_all("#scores li", """items => items.map(li => ({
        label: li.querySelector('.label').textContent,
        value: li.querySelector('.value').textContent,
        now: li.querySelector('.bar').getAttribute('aria-valuenow'),
        width: parseFloat(li.querySelector('.fill').style.width),
        visible: li.querySelector('.bar').getBoundingClientRect().width > 0,
    }))""")


def assert_scores_equal(pg, body: dict) -> None:
    got = shown_scores(pg)
    assert [s["label"] for s in got] == [s["label"] for s in body["scores"]]
    for g, s in zip(got, body["scores"]):
        assert g["value"] == pct(s["score"]), (g, s)
        assert g["now"] == f"{100 * s['score']:.1f}"
        assert g["width"] == pytest.approx(100 * s["score"], abs=1e-3)
        assert g["visible"], g


def test_page_upload_real_clip_equals_predict(page, base, clips):
    path = clips["three"][0]
    page.set_input_files("#file", str(path))  # the change event sends it
    assert wait_state(page, "done", "error") == "done", page.text_content("#error")
    want = post_audio(base, path.read_bytes(), path.name).json()
    assert want["keyword"] == "three"  # the tiny model knows its training clips
    assert page.text_content("#keyword") == want["keyword"]
    assert page.text_content("#confidence") == pct(want["confidence"])
    assert page.is_visible("#answer") and not page.is_visible("#error") and not page.is_visible("#placeholder")
    assert not page.is_visible("#detections-block")  # a one-second clip: no timeline
    assert_scores_equal(page, want)  # the server's default top_k (3)
    meta = page.text_content("#meta")
    assert "16000 Hz" in meta and "kws-tiny vtest-1" in meta and f"{want['duration_s']:.2f} s" in meta

    # "Show the scores of all labels" + the submit button: one bar per class.
    page.check("#all-labels")
    page.click("#send")
    page.wait_for_function("() => document.querySelectorAll('#scores li').length === 5")
    assert wait_state(page, "done", "error") == "done"
    want_all = post_audio(base, path.read_bytes(), path.name, params={"top_k": 5}).json()
    assert sorted(s["label"] for s in want_all["scores"]) == sorted(LABELS)
    assert_scores_equal(page, want_all)
    assert page.text_content("#keyword") == want_all["keyword"]
    assert page.text_content("#status") == "Done."
    assert page.kws_errors == []


def test_page_long_recording_timeline(page, base, clips, tmp_path):
    placed = [(1.0, clips["one"][0]), (4.0, clips["three"][1])]
    path = tmp_path / "long.wav"
    path.write_bytes(wav_bytes(long_recording(placed, duration_s=6.0)))
    page.set_input_files("#file", str(path))
    assert wait_state(page, "done", "error") == "done", page.text_content("#error")
    want = post_audio(base, path.read_bytes(), path.name).json()
    dets = want["detections"]
    assert dets, want  # the served answer finds the placed words ...
    assert page.is_visible("#detections-block")
    marks = page.eval_on_selector_all("#timeline .mark", "ms => ms.map(m => m.textContent)")
    items = page.eval_on_selector_all("#detections li", "ls => ls.map(l => l.textContent)")
    # ... and the page shows exactly those, one timeline mark and one list entry each.
    assert marks == [d["keyword"] for d in dets]
    assert len(items) == len(dets)
    for item, d in zip(items, dets):
        # the page rounds like JavaScript's toFixed (0.625 -> "0.63"), Python's format half to even ("0.62")
        word, start = item.split("–")[0].split(": ")
        assert word == d["keyword"] and float(start) == pytest.approx(d["start_s"], abs=0.006), item
        assert pct(d["confidence"]) in item
    for start, clip in placed:
        assert any(d["keyword"] == clip.parent.name and abs(d["start_s"] - start) <= 0.5 for d in dets), dets
    assert page.text_content("#timeline .axis") == "0 s – 6.0 s"
    assert page.get_attribute("#timeline", "aria-label") == f"Timeline of 6.0 s with {len(dets)} detection(s)"
    assert page.text_content("#keyword") == want["keyword"]
    assert page.kws_errors == []


def test_page_bad_file_shows_server_error(page, base, clips, tmp_path):
    bad = tmp_path / "x.wav"
    bad.write_bytes(b"this is not audio, just some text\n" * 50)
    page.set_input_files("#file", str(bad))
    assert wait_state(page, "done", "error") == "error"
    want = post_audio(base, bad.read_bytes(), bad.name)
    assert want.status_code == 415
    err = want.json()["error"]
    assert page.is_visible("#error") and not page.is_visible("#answer")
    assert page.text_content("#error") == f"{err['message']} ({err['code']})"
    assert page.text_content("#status") == ""
    # No crash: the page still works afterwards.
    good = clips["one"][0]
    page.set_input_files("#file", str(good))
    assert wait_state(page, "done", "error") == "done", page.text_content("#error")
    assert page.text_content("#keyword") == "one"
    assert not page.is_visible("#error")
    # The only console error is the browser's own log line for the 415 response.
    assert all("415" in e for e in page.kws_errors), page.kws_errors


def test_page_microphone_recording_reaches_predict(page, api):
    def predicted_200() -> float:
        text = requests.get(f"{api.url}/metrics", timeout=10).text
        return metric_value(text, "kws_http_requests_total", endpoint="/predict", method="POST", status="200")

    before = predicted_200()
    page.click("#record")
    page.wait_for_function("() => document.getElementById('record').getAttribute('aria-pressed') === 'true'")
    assert page.text_content("#record") == "Stop recording"
    page.wait_for_timeout(2500)  # the fake microphone plays the real clip in a loop
    page.click("#record")
    state = wait_state(page, "done", "error")
    assert state == "done", f"the recording was not recognised: {page.text_content('#error')}"
    assert page.text_content("#record") == "Record from microphone"
    assert page.get_attribute("#record", "aria-pressed") == "false"
    assert predicted_200() - before == 1  # really reached the API through nginx
    meta = page.text_content("#meta")
    duration = float(meta.split(" s of audio")[0])
    assert 1.5 < duration < 6.0, meta  # about the 2.5 s recorded, decoded from WebM/Opus by the server
    assert " s of audio at 48000 Hz · " in meta, meta  # the browser's WebM/Opus rate, as ffprobe reports it
    assert " Hz · kws-tiny vtest-1 · request " in meta, meta
    keyword = page.text_content("#keyword")
    assert keyword in LABELS
    # Over 1.5 s: scanned; the looped real clip is found on the timeline.
    marks = page.eval_on_selector_all("#timeline .mark", "ms => ms.map(m => m.textContent)")
    assert page.is_visible("#detections-block")
    assert MIC_WORD in marks and keyword == MIC_WORD, (keyword, marks)
    assert page.kws_errors == []
