"""``kws-predict``: send audio files to the kws service and print what it heard.

    kws-predict clip.wav other.mp3 [--url http://localhost/] [--json] [--threshold 0.5] [--timeout 30]

Each file is posted as the multipart field ``file`` to ``<url>predict``. One line per file
(``clip.wav: yes (confidence 0.97)``, plus one indented line per detection for long audio),
or one JSON object per line with ``--json``. Exit status: 0 when every file was recognised,
1 when any file failed (the server's error message is printed), 2 when the service cannot be
reached or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://localhost/"

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kws-predict", description="Recognise the keyword in audio files with the kws service.")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (WAV, FLAC, Ogg, MP3, WebM, M4A, ...)")
    p.add_argument("--url", default=os.environ.get("KWS_URL", DEFAULT_URL),
                   help=f"base URL of the service (default $KWS_URL or {DEFAULT_URL})")
    p.add_argument("--json", action="store_true", help="print one JSON object per file")
    p.add_argument("--threshold", type=float, default=None, help="answer _unknown_ below this confidence (0..1)")
    p.add_argument("--top-k", type=int, default=None, help="how many label scores to return")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each answer (default 30)")
    args = p.parse_args(argv)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        p.error("--threshold must be between 0 and 1")
    if args.top_k is not None and args.top_k < 1:
        p.error("--top-k must be at least 1")
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    return args


def base_url(base: str) -> str:
    """``localhost:8000`` -> ``http://localhost:8000/``: the service's root, with a scheme and a slash."""
    base = base.strip()
    if "://" not in base:
        base = "http://" + base
    return base if base.endswith("/") else base + "/"


def predict_url(base: str) -> str:
    return base_url(base) + "predict"


class Unreachable(Exception):
    pass


def post_file(session, url: str, path: Path, params: dict[str, Any], timeout: float) -> tuple[int, dict]:
    """POST one file; ``(status, json body)``. Raises :class:`Unreachable` when no answer comes."""
    import requests

    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    try:
        with open(path, "rb") as fh:
            resp = session.post(url, files={"file": (path.name, fh, mime)}, params=params, timeout=timeout)
    except requests.exceptions.Timeout:
        raise Unreachable(f"no answer from the kws service at {url} within {timeout:g} s") from None
    except requests.exceptions.ConnectionError:
        raise Unreachable(f"cannot reach the kws service at {url}: is it running?") from None
    except requests.exceptions.RequestException as err:
        raise Unreachable(f"request to {url} failed: {err}") from None
    try:
        body = resp.json()
    except ValueError:
        snippet = resp.text.strip().splitlines()[0][:200] if resp.text.strip() else "(empty body)"
        body = {"error": {"code": f"http_{resp.status_code}",
                          "message": f"HTTP {resp.status_code} from {url}, not a kws answer: {snippet}"}}
    if not isinstance(body, dict):
        body = {"error": {"code": "bad_answer", "message": f"unexpected answer from {url}"}}
    return resp.status_code, body


def format_result(name: str, body: dict) -> str:
    lines = [f"{name}: {body.get('keyword')} (confidence {float(body.get('confidence', 0)):.2f})"]
    for det in body.get("detections") or []:
        lines.append(f"  {det['keyword']} at {det['start_s']:.2f}-{det['end_s']:.2f} s (confidence {det['confidence']:.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import requests

    url = predict_url(args.url)
    params = {}
    if args.threshold is not None:
        params["threshold"] = args.threshold
    if args.top_k is not None:
        params["top_k"] = args.top_k
    status = EXIT_OK
    with requests.Session() as session:
        for name in args.files:
            path = Path(name)
            if not path.is_file():
                message = f"{name}: no such file"
                if args.json:
                    print(json.dumps({"file": name, "error": {"code": "file_not_found", "message": "no such file"}}))
                print(f"kws-predict: {message}", file=sys.stderr)
                status = max(status, EXIT_FAILED)
                continue
            try:
                code, body = post_file(session, url, path, params, args.timeout)
            except Unreachable as err:
                print(f"kws-predict: {err}", file=sys.stderr)
                return EXIT_UNREACHABLE
            except OSError as err:  # unreadable (permissions, removed meanwhile, I/O error): not a traceback
                reason = err.strerror or str(err)
                if args.json:
                    print(json.dumps({"file": name, "error": {"code": "file_unreadable", "message": reason}}), flush=True)
                print(f"kws-predict: {name}: cannot read the file: {reason}", file=sys.stderr)
                status = max(status, EXIT_FAILED)
                continue
            if code == 200 and "keyword" in body:
                print(json.dumps({"file": name, **body}) if args.json else format_result(name, body), flush=True)
                continue
            err = body.get("error") or {}
            message = err.get("message") or f"HTTP {code}"
            if args.json:
                print(json.dumps({"file": name, "status": code, "error": err}), flush=True)
            print(f"kws-predict: {name}: {message}" + (f" [{err['code']}]" if err.get("code") else ""), file=sys.stderr)
            status = max(status, EXIT_FAILED)
    return status


if __name__ == "__main__":
    sys.exit(main())
