"""The bounded request queue (issue 22, item 8), with the real Waitress server (one worker, a
queue bound of one) behind the real nginx: past the bound a request is answered at once with
503 ``overloaded`` + ``Retry-After``, but a chunk of an open live session waits its turn; /health
never waits; Waitress' queue warnings are rate-limited."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from tests.support.bundles import long_recording, wav_bytes
from tests.support.nginx import NginxProcess
from tests.support.processes import ApiProcess
from kws.serving.openapi import document
from kws.serving.overload import RateLimitFilter
from tests.support.openapi import assert_documented
from tests.support.nginx import nginx_or_skip
from tests.support.serving import assert_error, post_audio


def _slow_clip(clips) -> bytes:
    """60 s of audio (the longest accepted): scanned window by window, the slowest normal request."""
    placed = [(float(t), clips["one"][0]) for t in np.arange(2.0, 58.0, 7.0)]
    return wav_bytes(long_recording(placed, duration_s=60.0))


def test_past_the_bound_503_at_once_and_health_stays_fast(tmp_path, bundle, clips):
    nginx_or_skip()
    slow, short = _slow_clip(clips), clips["two"][0].read_bytes()
    # a fine stride makes the 60 s scan take seconds however fast the predictor gets, so the slow
    # requests are surely still in flight when the extra ones arrive
    env = {"KWS_THREADS": "1", "KWS_MAX_QUEUE": "1", "KWS_OVERLOAD_RETRY_AFTER_S": "3", "KWS_QUEUE_WARNING_S": "60",
           "KWS_WINDOW_STRIDE_S": "0.01"}
    with ApiProcess(bundle, tmp_path / "api", env=env) as api, \
            NginxProcess(tmp_path / "ngx", upstream=f"127.0.0.1:{api.port}") as ngx:
        assert post_audio(api.url, slow, "slow.wav").status_code == 200  # the first also creates interpreters
        session = requests.post(f"{ngx.url}/stream", timeout=30).json()["session"]  # opened before the load
        chunk = np.zeros(1600, "<f4").tobytes()
        t0 = time.perf_counter()
        assert post_audio(api.url, slow, "slow.wav").status_code == 200
        slow_s = time.perf_counter() - t0  # what one slow request takes, warm
        with ThreadPoolExecutor(4) as pool:
            # each pause only lets a request reach the server: a small part of a slow request's time
            running = pool.submit(post_audio, api.url, slow, "a.wav", timeout=120)
            time.sleep(min(0.3, slow_s / 10))
            queued = pool.submit(post_audio, ngx.url, slow, "b.wav", timeout=120)  # waits: the one queue place
            time.sleep(min(0.3, slow_s / 10))
            answers = []
            for url in (api.url, ngx.url, ngx.url + "/api"):
                t = time.perf_counter()
                resp = post_audio(url, short, "extra.wav", timeout=30)
                answers.append((time.perf_counter() - t, resp))
            # a chunk of the session opened before waits for its turn (load already admitted); a
            # new session is refused like any request past the bound
            chunk_answer = pool.submit(requests.post, f"{ngx.url}/stream/{session}?format=f32&seq=0", data=chunk,
                                       headers={"Content-Type": "application/octet-stream"}, timeout=120)
            time.sleep(min(0.3, slow_s / 10))
            new_session = requests.post(f"{ngx.url}/stream", timeout=30)
            busy = [running.done(), queued.done(), chunk_answer.done()]  # all answered while both were in flight
            t = time.perf_counter()
            health = requests.get(f"{ngx.url}/health", timeout=30)
            health_s = time.perf_counter() - t
            ready = requests.get(f"{api.url}/ready", timeout=30)
            first, second = running.result(), queued.result()
        assert first.status_code == second.status_code == 200, (first.text[:300], second.text[:300])
        assert chunk_answer.result().status_code == 200, chunk_answer.result().text[:300]
        assert chunk_answer.result().json()["t_s"] == 0.1
        assert_error(new_session, 503, "overloaded")
        assert busy == [False, False, False], f"the slow requests ended before the extra ones were sent (slow: {slow_s:.2f} s, extras: {[round(a[0], 3) for a in answers]})"
        for seconds, resp in answers:
            body = assert_error(resp, 503, "overloaded")
            assert resp.headers["Retry-After"] == "3" and "retry in 3 s" in body["error"]["message"]
            assert body["request_id"] == resp.headers["X-Request-ID"]
            assert_documented(document(), "POST", "/predict", resp.status_code, body, resp.headers)
            # answered without waiting for the busy worker (which needs slow_s for each slow request)
            assert seconds < min(0.25, slow_s / 4), (seconds, slow_s)
        assert health.status_code == 200 and health.json() == {"status": "ok"} and health_s < min(0.25, slow_s / 4)
        assert ready.status_code == 200
        # the load is gone: served normally again
        assert post_audio(ngx.url, short, "after.wav").status_code == 200
        metrics = requests.get(f"{api.url}/metrics", timeout=10).text
        assert 'kws_errors_total{code="overloaded"} 4.0' in metrics
        log = api.log.read_text()
    assert log.count("Task queue depth is") <= 1, log[-3000:]


def test_queue_warnings_are_rate_limited_with_a_count():
    logger = logging.getLogger("kws.test.queue")
    logger.propagate = False
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    limit = RateLimitFilter(0.3)
    logger.addFilter(limit)
    try:
        for depth in range(1, 51):
            logger.warning("Task queue depth is %d", depth)
        time.sleep(0.35)
        logger.warning("Task queue depth is %d", 7)
    finally:
        logger.removeFilter(limit)
        logger.removeHandler(handler)
    assert seen == ["Task queue depth is 1",
                    "Task queue depth is 7 (49 similar warnings in the last 0.3 s not logged)"], seen
