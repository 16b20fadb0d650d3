"""wrk, the HTTP load generator, as the serving benchmarks drive it.

A Lua request script (a multipart POST of one WAV, or plain GETs) ends with ``LUA_DONE``, which
prints wrk's summary as one ``KWS_WRK_JSON`` line; :func:`run` runs wrk, :func:`summary` reads
that line and :func:`parse` adds wrk's own text report beside it as a cross-check.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from pathlib import Path

LUA_POST = """\
local f = assert(io.open("{body}", "rb"))
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "multipart/form-data; boundary={boundary}"

"""
# wrk's summary as one JSON line (summary), after any request script
LUA_DONE = """\
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "KWS_WRK_JSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"bytes\\": %d, " ..
    "\\"errors\\": {{\\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d}}, " ..
    "\\"latency_us\\": {{\\"p50\\": %d, \\"p90\\": %d, \\"p99\\": %d, \\"mean\\": %.1f, \\"min\\": %d, \\"max\\": %d}}}}\\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.min, latency.max))
end
"""


def multipart_body(data: bytes, name: str, boundary: str) -> bytes:
    """A multipart/form-data body of one WAV as the field ``file``, as browsers and curl send it."""
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()


def write_post_script(tmp: Path, clip: Path) -> tuple[Path, bytes, str]:
    """A wrk script POSTing ``clip`` as multipart field ``file``: (script, body, boundary)."""
    boundary = "kwsbench" + secrets.token_hex(8)
    body = multipart_body(clip.read_bytes(), clip.name, boundary)
    body_path = tmp / "body.bin"
    body_path.write_bytes(body)
    script = tmp / "post_wav.lua"
    script.write_text(LUA_POST.format(body=str(body_path), boundary=boundary) + LUA_DONE.format())
    return script, body, boundary


def write_get_script(tmp: Path) -> Path:
    """A wrk script of plain GETs that prints the same summary."""
    script = tmp / "get.lua"
    script.write_text(LUA_DONE.format())
    return script


WRK_JSON = re.compile(r"^KWS_WRK_JSON (\{.*\})$", re.M)
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def run(url: str, script: Path, duration: float, connections: int, threads: int, timeout: str,
        latency: bool = True) -> str:
    """wrk's whole output (stdout, then stderr) for one run; RuntimeError when it fails."""
    wrk = shutil.which("wrk") or "/usr/bin/wrk"
    cmd = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
           "--timeout", timeout, *(["--latency"] if latency else []), "-s", str(script), url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0 or not WRK_JSON.search(text):
        raise RuntimeError(f"wrk failed ({proc.returncode}) or printed no summary:\n{text}")
    return text


def summary(text: str) -> dict:
    """The ``KWS_WRK_JSON`` line a script's ``done`` printed, as a dict."""
    m = WRK_JSON.search(text)
    if not m:
        raise RuntimeError(f"wrk printed no summary:\n{text}")
    return json.loads(m.group(1))


def parse(text: str) -> dict:
    """The figures of a ``LUA_DONE`` run, in ms, with wrk's own text report beside them."""
    j = summary(text)
    seconds = j["duration_us"] / 1e6
    lat = {k: round(v / 1000.0, 3) for k, v in j["latency_us"].items()}
    out = {"requests": j["requests"], "seconds": round(seconds, 2),
           "requests_per_s": round(j["requests"] / seconds, 2) if seconds else 0.0,
           "latency_ms": {k: lat[k] for k in ("p50", "p90", "p99", "mean", "min", "max")},
           "socket_errors": {k: j["errors"][k] for k in ("connect", "read", "write", "timeout")},
           "non_2xx_3xx": j["errors"]["status"]}
    # Cross-check with wrk's own text report.
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["requests_per_s_wrk"] = float(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx_3xx_wrk"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    # (wrk prints the "Socket errors" line only when there were some)
    out["socket_errors_wrk"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()) if m else (0,) * 4))
    dist = {}
    for pct, val, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M):
        dist[f"p{pct}"] = round(float(val) * _UNITS[unit], 3)
    out["latency_distribution_wrk_ms"] = dist
    out["errors_total"] = out["non_2xx_3xx"] + sum(out["socket_errors"].values())
    return out


def load(url: str, script: Path, duration: float, connections: int, threads: int, timeout: str) -> tuple[dict, str]:
    """One run of a ``LUA_DONE`` script: (:func:`parse`'s figures, wrk's output)."""
    text = run(url, script, duration, connections, threads, timeout)
    return parse(text), text
