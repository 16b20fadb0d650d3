"""``kws-serve``: the production server — Waitress serving :func:`kws.serving.app.create_app`.

    kws-serve [--host 0.0.0.0] [--port 8000] [--threads 4]     (or KWS_HOST / KWS_PORT / KWS_THREADS)

The socket is bound first, the model loads and warms up in the background (``/health`` answers
meanwhile, ``/ready`` says 503 until it is done), then one line is logged:
``kws service ready on http://HOST:PORT ...``. SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from kws.errors import KWSError
from kws.logs import setup_logging

log = logging.getLogger("kws.serving.server")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kws-serve", description="Serve the keyword-spotting model with Waitress.")
    p.add_argument("--host", default=os.environ.get("KWS_HOST", "0.0.0.0"), help="bind address (KWS_HOST)")
    p.add_argument("--port", type=int, default=int(os.environ.get("KWS_PORT", "8000")), help="port (KWS_PORT)")
    p.add_argument("--threads", type=int, default=None, help="worker threads (KWS_THREADS, default 4)")
    p.add_argument("--model-dir", default=None, help="model bundle directory (KWS_MODEL_DIR)")
    p.add_argument("--runtime", choices=("tflite", "keras"), default=None, help="inference runtime (KWS_RUNTIME)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from waitress import create_server

    from kws.serving.app import create_app

    overrides = {k: v for k, v in (("threads", args.threads), ("model_dir", args.model_dir),
                                   ("runtime", args.runtime)) if v is not None}
    try:
        app = create_app({**overrides, "preload": False})
    except KWSError as err:
        print(f"kws-serve: {err.message}", file=sys.stderr)
        return 2
    cfg = app.config["KWS"]
    max_body = int(cfg["max_upload_mb"] * 1024 * 1024)
    server = create_server(
        app, host=args.host, port=args.port, threads=cfg["threads"], ident="kws",
        # Waitress' own (plain-text) 413 only for absurd bodies; the app answers JSON 413 above its limit.
        max_request_body_size=4 * max_body + (1 << 20),
        inbuf_overflow=max_body + (1 << 20),  # keep request bodies in memory, never in temp files
        channel_timeout=60, connection_limit=256, clear_untrusted_proxy_headers=True,
    )
    url = f"http://{args.host}:{args.port}"
    state = app.extensions["kws"]
    state.on_ready.append(lambda p: log.info(
        "kws service ready on %s (model %s v%s, %s runtime, %d labels, %d threads, loaded in %.1f s)",
        url, p.model_name, p.model_version, p.runtime.name, len(p.labels), cfg["threads"], p.load_seconds))
    state.start_loading()
    run_until_stopped(server)
    log.info("kws service stopped")
    return 0


def run_until_stopped(server) -> None:
    """Run a Waitress ``server`` until SIGTERM or SIGINT, then close its sockets."""

    def _stop(signum, _frame):
        log.info("signal %d: stopping", signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
