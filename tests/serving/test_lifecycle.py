"""The service's life while deployed: a new champion goes live without a restart or a failed
request (polling, SIGHUP, the admin endpoint), a broken bundle never replaces a good one, and
SIGTERM lets in-flight requests finish. Real Waitress processes behind the real nginx."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from kws.atomic import staged_dir
from tests.support.bundles import long_recording, wav_bytes
from tests.support.nginx import NginxProcess, nginx_or_skip
from tests.support.processes import ApiProcess
from tests.support.serving import assert_error, metric_value


def _bundle_version(src: Path, dst: Path, version: str) -> Path:
    """A copy of bundle ``src`` that says it is ``version`` (what a newly promoted champion looks like)."""
    shutil.copytree(src, dst)
    info = json.loads((dst / "model_info.json").read_text())
    info.update(version=version, run_id=f"run-{version}")
    (dst / "model_info.json").write_text(json.dumps(info))
    return dst


def _swap_in(src: Path, model_dir: Path) -> None:
    """Exactly how ``promote`` publishes a bundle: build beside the target, then swap folders by rename."""
    with staged_dir(model_dir) as tmp:
        for item in src.iterdir():
            shutil.copy2(item, tmp / item.name)


def _served_version(api_url: str) -> str:
    return requests.get(f"{api_url}/model", timeout=10).json()["model_info"]["version"]


def _wait_version(api_url: str, version: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = _served_version(api_url)
        if seen == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"the service still serves {seen!r} {timeout:.0f} s after {version!r} was swapped in")


class _Load:
    """Threads posting a real clip in a loop; every answer's status, model version and send time is kept."""

    def __init__(self, url: str, clip: bytes, threads: int = 3):
        self.url, self.clip = url, clip
        self.results: list[tuple[int, str | None, float]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = session.post(f"{self.url}/predict", files={"file": ("c.wav", self.clip)}, timeout=30)
                    version = r.json()["model"]["version"] if r.status_code == 200 else r.text[:200]
                    self.results.append((r.status_code, version, sent))
                except requests.RequestException as err:
                    self.results.append((-1, str(err), sent))

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(60)


@pytest.fixture
def model_dir(tmp_path, bundle) -> Path:
    """A private ``serving/model`` holding a copy of the session's bundle (version test-1)."""
    return _bundle_version(bundle, tmp_path / "serving" / "model", "test-1")


def test_new_champion_goes_live_under_load_without_a_failed_request(tmp_path, model_dir, clips):
    nginx_or_skip()
    clip = next(iter(clips.values()))[0].read_bytes()
    api = ApiProcess(model_dir, tmp_path / "api", env={"KWS_RELOAD_S": "0.3", "KWS_THREADS": "4"})
    with api, NginxProcess(tmp_path / "nginx", upstream=f"127.0.0.1:{api.port}") as ngx:
        assert _served_version(api.url) == "test-1"
        with _Load(ngx.url, clip) as load:
            time.sleep(1.0)
            _swap_in(_bundle_version(model_dir, tmp_path / "v2", "test-2"), model_dir)
            _wait_version(api.url, "test-2")
            swapped = time.monotonic()  # /model answered test-2: every request sent from now on gets it
            time.sleep(1.0)
            # a broken candidate (unreadable labels, corrupt model) is refused: the good one keeps serving
            broken = _bundle_version(model_dir, tmp_path / "broken", "test-3")
            (broken / "labels.json").write_text('{"labels": [')
            (broken / "model.tflite").write_bytes(b"not a flatbuffer" * 64)
            _swap_in(broken, model_dir)
            time.sleep(1.5)
        ready = requests.get(f"{api.url}/ready", timeout=10)
        served = _served_version(api.url)
        metrics = requests.get(f"{api.url}/metrics", timeout=10).text
    failures = [r for r in load.results if r[0] != 200]
    assert not failures, f"{len(failures)} of {len(load.results)} requests failed during the swaps: {failures[:5]}"
    before = [v for _, v, sent in load.results if sent < swapped]
    after = [v for _, v, sent in load.results if sent >= swapped]
    assert before and after and before[0] == "test-1" and load.results[-1][1] == "test-2", load.results
    # requests in flight during the swap may finish on the old model; any sent after it must not
    assert set(after) == {"test-2"}, "a request sent after the swap was answered by the old model"
    assert ready.status_code == 200 and served == "test-2"
    assert metric_value(metrics, "kws_model_reloads_total") == 1
    assert metric_value(metrics, "kws_model_info", version="test-2") == 1
    log = api.log.read_text()
    assert "model reloaded: kws-tiny vtest-1 -> kws-tiny vtest-2" in log
    assert "NOT loaded, still serving kws-tiny vtest-2" in log and "Traceback" not in log


def test_sighup_and_the_admin_endpoint_reload_on_demand(tmp_path, model_dir):
    api = ApiProcess(model_dir, tmp_path / "api", env={"KWS_RELOAD_S": "0", "KWS_ADMIN_TOKEN": "s3cret"})
    with api:
        _swap_in(_bundle_version(model_dir, tmp_path / "v2", "test-2"), model_dir)
        time.sleep(1.0)
        assert _served_version(api.url) == "test-1", "KWS_RELOAD_S=0 must not poll"
        api.proc.send_signal(signal.SIGHUP)
        _wait_version(api.url, "test-2", timeout=15)

        _swap_in(_bundle_version(model_dir, tmp_path / "v3", "test-3"), model_dir)
        assert_error(requests.post(f"{api.url}/admin/reload", timeout=10), 401, "unauthorized")
        assert_error(requests.post(f"{api.url}/admin/reload", headers={"Authorization": "Bearer nope"}, timeout=10),
                     401, "unauthorized")
        assert _served_version(api.url) == "test-2"
        auth = {"Authorization": "Bearer s3cret"}
        first = requests.post(f"{api.url}/admin/reload", headers=auth, timeout=30)
        assert first.status_code == 200, first.text
        assert first.json() == {"reloaded": True, "model": {"name": "kws-tiny", "version": "test-3"},
                                "previous": {"name": "kws-tiny", "version": "test-2"}}
        again = requests.post(f"{api.url}/admin/reload", headers=auth, timeout=30).json()
        assert again["reloaded"] is False and again["model"]["version"] == "test-3"


def test_admin_endpoint_is_off_without_a_token(api):
    body = assert_error(requests.post(f"{api.url}/admin/reload", timeout=10), 403, "forbidden")
    assert "KWS_ADMIN_TOKEN" in body["error"]["message"]


def test_sigterm_finishes_in_flight_requests_then_exits_0(tmp_path, bundle, clips):
    nginx_or_skip()
    words = [paths[0] for paths in clips.values()]
    audio = wav_bytes(long_recording([(3.0 + 9 * i, p) for i, p in enumerate(words)], duration_s=40.0))
    api = ApiProcess(bundle, tmp_path / "api", env={"KWS_THREADS": "10", "KWS_GRACE_S": "60"})
    with api, NginxProcess(tmp_path / "nginx", upstream=f"127.0.0.1:{api.port}") as ngx:
        results: list[int] = []

        def post() -> None:
            try:
                r = requests.post(f"{ngx.url}/predict", files={"file": ("long.wav", audio)}, timeout=120)
                results.append(r.status_code)
            except requests.RequestException:
                results.append(-1)

        threads = [threading.Thread(target=post) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while True:  # all 8 inside the app (the /metrics request itself is the +1)
            text = requests.get(f"{api.url}/metrics", timeout=10).text
            if metric_value(text, "kws_http_requests_in_flight") - 1 >= 8:
                break
            assert time.monotonic() < deadline, "the 8 requests never were in flight together"
            time.sleep(0.02)
        api.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        code = api.proc.wait(60)
        with pytest.raises(requests.ConnectionError):  # no longer accepting
            requests.get(f"{api.url}/health", timeout=5)
    assert results == [200] * 8, results
    assert code == 0
    log = api.log.read_text()
    assert "draining" in log and "drained: every request received was answered" in log and "Traceback" not in log
