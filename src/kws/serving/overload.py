"""A bounded request queue for Waitress: past the bound, answer 503 ``overloaded`` at once.

Waitress hands each received request to its task dispatcher, which queues it until one of the
``threads`` workers is free; the queue has no bound, so under overload every request waits (and
each queued one logs ``Task queue depth is N``). The app cannot see that queue — a request
reaches Flask only once a worker runs it — so the bound is enforced where requests are queued:

* :class:`BoundedDispatcher` (Waitress' ``ThreadedTaskDispatcher``) counts the requests waiting
  for a worker. Past ``max_queue`` it sends the request to a small *fast lane* instead, whose
  threads run it with :func:`shedding` true: the app answers 503 ``overloaded`` + ``Retry-After``
  without decoding anything (``kws.serving.app``), in about a millisecond.
* Cheap probes (``/health``, ``/ready``) always take the fast lane and are answered normally, so
  a healthcheck never waits behind queued predictions.
* The chunks of open live sessions (``POST``/``DELETE /stream/<id>``) have ``session_allowance``
  more places (the service's session limit): a session was admitted when it opened (``POST
  /stream`` is bounded like any request), each of its clients sends one chunk at a time, so these
  are load already accepted and bounded by the open sessions. Shedding one would free nothing
  (the client sends the same audio again) and break the stream (its next chunk out of order).
  The dispatcher cannot tell an open session's id from a made-up one; a chunk for an unknown
  session takes the same places and is answered 404 without any model time.
* :class:`RateLimitFilter` lets one ``waitress.queue`` warning through per ``interval_s``, with
  the number of warnings it held back.

Waitress 3 re-queues a keep-alive channel once per request (``HTTPChannel.service`` serves one
request, then calls ``add_task`` again), so each decision here is about exactly one request.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time

from waitress.task import ThreadedTaskDispatcher

log = logging.getLogger("kws.serving.overload")

#: Answered in the fast lane whatever the load: they cost no model time.
CHEAP_PATHS = frozenset({"/health", "/ready", "/api/health", "/api/ready"})
#: A chunk for (or the close of) an open live session, directly or through nginx's /api/.
SESSION_CHUNK = re.compile(r"^(?:/api)?/stream/[^/]+/?$")

_lane = threading.local()


def shedding() -> bool:
    """True while the current thread answers a request that came past the queue bound."""
    return getattr(_lane, "shed", False)


class BoundedDispatcher(ThreadedTaskDispatcher):
    """Waitress' dispatcher with a bound on waiting requests and a fast lane (see the module doc)."""

    def __init__(self, max_queue: int, lane_threads: int = 2, on_shed=None, session_allowance: int = 0):
        super().__init__()
        self.max_queue = max_queue
        self.session_allowance = max(0, int(session_allowance))
        self.on_shed = on_shed  # called (in Waitress' main thread) for each request shed
        self.shed_count = 0
        self._lane: queue.SimpleQueue = queue.SimpleQueue()
        self._lane_threads = [threading.Thread(target=self._run_lane, name=f"kws-fast-lane-{i}", daemon=True)
                              for i in range(lane_threads)]
        for t in self._lane_threads:
            t.start()

    def waiting(self, extra: int = 0) -> int:
        """Requests queued (plus ``extra`` about to be) that no idle worker is about to take."""
        idle = len(self.threads) - self.stop_count - self.active_count
        return max(0, len(self.queue) + extra - idle)

    def add_task(self, task) -> None:
        request = task.requests[0] if getattr(task, "requests", None) else None
        path = getattr(request, "path", None)
        if path in CHEAP_PATHS:
            self._lane.put((task, False))
            return
        bound = self.max_queue
        if path is not None and getattr(request, "command", "") in ("POST", "DELETE") and SESSION_CHUNK.match(path):
            bound += self.session_allowance
        with self.lock:
            full = self.waiting(extra=1) > bound  # would this one wait past the bound?
        if full:
            self.shed_count += 1
            if self.on_shed is not None:
                self.on_shed()
            self._lane.put((task, True))
            return
        super().add_task(task)

    def _run_lane(self) -> None:
        while True:
            item = self._lane.get()
            if item is None:
                return
            task, shed = item
            _lane.shed = shed
            try:
                task.service()
            except BaseException:  # noqa: BLE001 - like Waitress' own workers: log, keep serving
                self.logger.exception("Exception when servicing %r", task)
            finally:
                _lane.shed = False

    def shutdown(self, cancel_pending=True, timeout=5):
        for _ in self._lane_threads:
            self._lane.put(None)
        return super().shutdown(cancel_pending=cancel_pending, timeout=timeout)


class RateLimitFilter(logging.Filter):
    """Let one record through per ``interval_s``; the next one says how many were held back."""

    def __init__(self, interval_s: float):
        super().__init__()
        self.interval_s = interval_s
        self._last = float("-inf")
        self._held = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.interval_s:
                self._held += 1
                return False
            held, self._held, self._last = self._held, 0, now
        if held:
            record.msg = f"{record.msg} ({held} similar warnings in the last {self.interval_s:g} s not logged)"
        return True


def limit_queue_warnings(interval_s: float, logger_name: str = "waitress.queue") -> RateLimitFilter:
    """Install (once) a :class:`RateLimitFilter` on Waitress' queue logger."""
    logger = logging.getLogger(logger_name)
    for f in logger.filters:
        if isinstance(f, RateLimitFilter):
            f.interval_s = interval_s
            return f
    f = RateLimitFilter(interval_s)
    logger.addFilter(f)
    return f
