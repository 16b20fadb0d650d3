"""``kws-serve``: the production server — Waitress serving :func:`kws.serving.app.create_app`.

    kws-serve [--host 0.0.0.0] [--port 8000] [--threads 4]     (or KWS_HOST / KWS_PORT / KWS_THREADS)

Settings: docs/settings.md (one table, :mod:`kws.serving.settings`). A start-up error (a bad
setting, a port in use) is one line on stderr and exit code 2, never a traceback.

The socket is bound first, the model loads and warms up in the background (``/health`` answers
meanwhile, ``/ready`` says 503 until it is done), then one line is logged:
``kws service ready on http://HOST:PORT ...``.

Signals:

* SIGTERM / SIGINT (``docker stop``, compose): graceful shutdown. The listening socket closes
  at once (new connections are refused, so a proxy tries another replica), ``/ready`` answers
  503, idle keep-alive connections are closed, and requests already received run to the end
  — for at most ``KWS_GRACE_S`` seconds (default 20; keep compose's ``stop_grace_period``
  above it). Then the process exits 0. A second signal exits at once.
* SIGHUP: check the model bundle now and swap in a new champion (see ``KWS_RELOAD_S``).
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
import threading
import time

from kws.errors import KWSError
from kws.logs import setup_logging
from kws.serving import settings

log = logging.getLogger("kws.serving.server")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kws-serve", description="Serve the keyword-spotting model with Waitress.",
                                epilog="Every setting is also an environment variable: see docs/settings.md.")
    p.add_argument("--host", default=None, help="bind address (KWS_HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, default=None, help="port (KWS_PORT, default 8000)")
    p.add_argument("--threads", type=int, default=None, help="worker threads (KWS_THREADS, default 4)")
    p.add_argument("--model-dir", default=None, help="model bundle directory (KWS_MODEL_DIR)")
    p.add_argument("--runtime", choices=settings.RUNTIMES, default=None, help="inference runtime (KWS_RUNTIME)")
    return p.parse_args(argv)


def _bind_error(err: OSError, host: str, port: int) -> str:
    """One actionable line for a socket that cannot be bound."""
    where = f"port {port} on {host}"
    if err.errno == errno.EADDRINUSE:
        return f"{where} is in use (another kws-serve?); stop that process or choose another port (--port / KWS_PORT)"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"{where}: permission denied (ports below 1024 need privileges); use a higher port (--port / KWS_PORT)"
    if err.errno == errno.EADDRNOTAVAIL:
        return f"{where}: {host} is not an address of this machine; set --host / KWS_HOST (0.0.0.0: every address)"
    return f"cannot listen on {where}: {err.strerror or err}"


def main(argv: list[str] | None = None) -> int:
    """Start the service; a start-up error is ONE line on stderr and exit code 2."""
    args = parse_args(argv)
    setup_logging()
    from waitress import create_server

    from kws.serving.app import create_app
    from kws.serving.overload import BoundedDispatcher, limit_queue_warnings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("threads", args.threads),
                                   ("model_dir", args.model_dir), ("runtime", args.runtime)) if v is not None}
    try:
        app = create_app({**overrides, "preload": False})
    except KWSError as err:
        print(f"kws-serve: {err.message}", file=sys.stderr)
        return 2
    cfg = app.config["KWS"]
    host, port = cfg["host"], cfg["port"]
    max_body = int(cfg["max_upload_mb"] * 1024 * 1024)
    limit_queue_warnings(cfg["queue_warning_s"])
    dispatcher = BoundedDispatcher(cfg["max_queue"], session_allowance=cfg["stream_max_sessions"])
    try:
        server = create_server(
            app, host=host, port=port, threads=cfg["threads"], ident="kws", _dispatcher=dispatcher,
            # Waitress' own (plain-text) 413 only for absurd bodies; the app answers JSON 413 above its limit.
            max_request_body_size=4 * max_body + (1 << 20),
            inbuf_overflow=max_body + (1 << 20),  # keep request bodies in memory, never in temp files
            channel_timeout=60, connection_limit=cfg["connection_limit"], clear_untrusted_proxy_headers=True,
            asyncore_use_poll=True,  # select() cannot watch descriptors above FD_SETSIZE (1024)
        )
    except OSError as err:
        dispatcher.shutdown(timeout=1)
        print(f"kws-serve: {_bind_error(err, host, port)}", file=sys.stderr)
        return 2
    dispatcher.set_thread_count(cfg["threads"])  # what create_server does for its own dispatcher
    url = f"http://{host}:{port}"
    state = app.extensions["kws"]
    state.on_ready.append(lambda p: log.info(
        "kws service ready on %s (model %s v%s, %s runtime, %d labels, %d threads, queue bound %d, loaded in %.1f s)",
        url, p.model_name, p.model_version, p.runtime.name, len(p.labels), cfg["threads"], cfg["max_queue"],
        p.load_seconds))
    state.start_loading()
    state.start_watching()
    signal.signal(signal.SIGHUP, lambda *_: state.request_reload())
    run_until_stopped(server, state, grace_s=cfg["grace_s"])
    state.stop_watching()
    log.info("kws service stopped")
    return 0


def _busy(channel) -> bool:
    """A Waitress channel with a request being received, queued, handled or written back."""
    return bool(channel.requests or channel.total_outbufs_len or getattr(channel, "request", None) is not None)


def run_until_stopped(server, state=None, grace_s: float = 20.0, tick_s: float = 0.25) -> bool:
    """Run a Waitress ``server`` until SIGTERM/SIGINT, then drain it (see the module doc).

    Returns ``True`` when every request received was answered within ``grace_s``.
    """
    from waitress import wasyncore

    stop = threading.Event()

    def _stop(signum, _frame):
        if stop.is_set():
            log.warning("signal %d again: exiting now", signum)
            raise SystemExit(1)
        log.info("signal %d: draining (at most %.0f s), no new connections", signum, grace_s)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    loop, use_poll = server.asyncore.loop, server.adj.asyncore_use_poll
    try:
        while not stop.is_set():  # the signal handler only sets the flag; the loop notices within a tick
            loop(timeout=tick_s, map=server._map, use_poll=use_poll, count=1)
        if state is not None:
            state.draining = True
        wasyncore.dispatcher.close(server)  # the listening socket only (not the trigger): connections refused
        deadline = time.monotonic() + grace_s
        while True:
            channels = list(server.active_channels.values())
            busy = [ch for ch in channels if _busy(ch)]
            for ch in channels:
                if not _busy(ch) and not ch.will_close:
                    ch.will_close = True  # idle keep-alive connection: close it, nothing is lost
            if not busy:
                log.info("drained: every request received was answered")
                return True
            if time.monotonic() >= deadline:
                log.warning("grace period of %.0f s is over: %d request(s) still running are cut", grace_s, len(busy))
                return False
            loop(timeout=0.05, map=server._map, use_poll=use_poll, count=1)
    finally:
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        wasyncore.close_all(server._map)


if __name__ == "__main__":
    sys.exit(main())
