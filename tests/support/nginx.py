"""The real nginx for the tests and benchmarks: the project's template rendered exactly like the
official nginx image does (``envsubst`` restricted to the ``KWS_*`` variables, its ``.envsh``
step), wrapped in the small native main config ``nginx/native.conf.template``, run on a free
loopback port."""

from __future__ import annotations

import functools
import getpass
import logging
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Mapping

from .paths import NGINX_DIR
from .processes import ManagedProcess, free_port, wait_http

TEMPLATE = NGINX_DIR / "templates" / "default.conf.template"
NATIVE_WRAPPER = NGINX_DIR / "native.conf.template"

# The server parameter "resolve" of the upstream (re-resolve a name while running) is in nginx
# open source since 1.27.3; the image has 1.28, Debian 12's nginx is 1.22.
RESOLVE_MIN_NGINX = (1, 27, 3)

log = logging.getLogger(__name__)


def nginx_binary() -> str | None:
    for cand in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def nginx_or_skip() -> str:
    """The nginx binary, or skip the calling test (pytest is imported here only: the benchmarks
    use this module without it)."""
    import pytest

    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx; scripts/setup.sh does)")
    return binary


def nginx_version(binary: str | None = None) -> tuple[int, ...] | None:
    """``(1, 22, 1)`` from ``nginx -v`` (which prints to stderr); None without nginx."""
    binary = binary or nginx_binary()
    if binary is None:
        return None
    return _nginx_version(binary)


@functools.lru_cache(maxsize=None)
def _nginx_version(binary: str) -> tuple[int, ...] | None:
    res = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30)
    m = re.search(r"nginx/(\d+(?:\.\d+)*)", res.stderr + res.stdout)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def envsubst(text: str, variables: Mapping[str, str]) -> str:
    """``envsubst`` restricted to ``variables`` (as the nginx image's NGINX_ENVSUBST_FILTER=KWS_ does):
    ``$NAME``/``${NAME}`` of those names are replaced, every other ``$...`` (nginx variables) stays."""

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return str(variables[name]) if name in variables else m.group(0)

    return _VAR.sub(repl, text)


def nginx_variables(upstream: str, listen: str, html_root: Path | str, max_upload_mb: float | str = 10,
                    resolver: str = "127.0.0.1", timeout: str = "60s", resolve: str = "",
                    admin_allow: str = "127.0.0.1", max_predicts: int = 64) -> dict[str, str]:
    """The variables of ``default.conf.template`` (docker-compose.yml sets the same names).

    ``max_upload_mb`` is the api's ``KWS_MAX_UPLOAD_MB`` (the same number serves both);
    ``admin_allow`` the addresses that may read /metrics, /openapi.json and /admin/
    (the tests talk to nginx from 127.0.0.1)."""
    return {
        "KWS_API_UPSTREAM": upstream, "KWS_UPSTREAM_RESOLVE": resolve, "KWS_LISTEN": listen,
        "KWS_HTML_ROOT": str(html_root), "KWS_MAX_UPLOAD_MB": f"{float(max_upload_mb):g}",
        "KWS_RESOLVER": resolver, "KWS_PROXY_TIMEOUT": timeout, "KWS_ADMIN_ALLOW": admin_allow,
        "KWS_MAX_PREDICTS": str(max_predicts),
    }


def admin_allow_rules(value: str) -> str:
    """``"127.0.0.1, 10.0.0.0/8"`` -> ``"127.0.0.1; allow 10.0.0.0/8"`` for the template's
    ``allow ${KWS_ADMIN_ALLOW};`` -- what ``nginx/templates/15-kws-admin-allow.envsh`` does in the image."""
    items = [a for a in re.split(r"[\s,;]+", str(value)) if a]
    return "; allow ".join(items) or "127.0.0.1"


def api_upstream_servers(value: str, resolve: str = "") -> str:
    """``"a:1 b:2"`` -> ``"a:1 max_fails=3 fail_timeout=10s; server b:2"`` for the template's
    ``server ${KWS_API_UPSTREAM} ${KWS_UPSTREAM_RESOLVE} max_fails=3 fail_timeout=10s;`` -- what
    ``nginx/templates/16-kws-api-upstream.envsh`` does in the image."""
    params = " ".join([*resolve.split(), "max_fails=3", "fail_timeout=10s"])
    items = [a for a in re.split(r"[\s,;]+", str(value)) if a]
    return f" {params}; server ".join(items) or "api:8000"


def image_render_steps(variables: Mapping[str, str], version: tuple[int, ...] | None) -> dict[str, str]:
    """The values as the template gets them at render time: the list of KWS_ADMIN_ALLOW made
    into ``allow`` rules and the KWS_API_UPSTREAM list into servers (the image's .envsh files),
    and "resolve" dropped from KWS_UPSTREAM_RESOLVE for an nginx older than 1.27.3 (which rejects it) -- logged, the upstream then stays the
    address resolved at start, which is all a loopback test needs."""
    out = dict(variables)
    if "KWS_ADMIN_ALLOW" in out:
        out["KWS_ADMIN_ALLOW"] = admin_allow_rules(out["KWS_ADMIN_ALLOW"])
    params = str(out.get("KWS_UPSTREAM_RESOLVE", "")).split()
    if "resolve" in params and version is not None and version < RESOLVE_MIN_NGINX:
        out["KWS_UPSTREAM_RESOLVE"] = " ".join(p for p in params if p != "resolve")
        log.warning("nginx %s is older than %s: dropping the upstream parameter 'resolve' "
                    "(the api address is resolved once, at start; the zone stays, harmless)",
                    ".".join(map(str, version)), ".".join(map(str, RESOLVE_MIN_NGINX)))
    if "KWS_API_UPSTREAM" in out:
        out["KWS_API_UPSTREAM"] = api_upstream_servers(out["KWS_API_UPSTREAM"], out.get("KWS_UPSTREAM_RESOLVE", ""))
    return out


def render_nginx(prefix: Path, variables: Mapping[str, str], workers: int = 1, binary: str | None = None) -> Path:
    """Render the template + native wrapper into ``prefix``; return the main nginx.conf path.

    ``variables`` are the image's/compose's values; :func:`image_render_steps` adapts them for
    the nginx ``binary`` (default: the installed one) like the image's entrypoint does."""
    prefix = Path(prefix)
    prefix.mkdir(parents=True, exist_ok=True)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
        (prefix / sub).mkdir(exist_ok=True)
    variables = image_render_steps(variables, nginx_version(binary))
    site = envsubst(TEMPLATE.read_text(), variables)
    leftover = re.findall(r"\$\{?KWS_[A-Z_]+", site)
    if leftover:
        raise ValueError(f"template variables without a value: {sorted(set(leftover))}")
    (prefix / "default.conf").write_text(site)
    mime = Path("/etc/nginx/mime.types")
    main_vars = {
        "KWS_NGINX_PREFIX": str(prefix), "KWS_NGINX_WORKERS": str(workers),
        "KWS_NGINX_USER": getpass.getuser(),
        "KWS_NGINX_MIME_TYPES": str(mime if mime.is_file() else prefix / "mime.types"),
    }
    if not mime.is_file():
        (prefix / "mime.types").write_text(
            "types {\n text/html html; text/css css; application/javascript js; application/json json;\n}\n")
    conf = prefix / "nginx.conf"
    conf.write_text(envsubst(NATIVE_WRAPPER.read_text(), main_vars))
    return conf


class NginxProcess(ManagedProcess):
    """Real nginx (``nginx -p PREFIX -c PREFIX/nginx.conf -g 'daemon off;'``) on a free loopback port."""

    stop_signal = signal.SIGQUIT  # graceful: finish requests, then exit

    def __init__(self, prefix: Path, upstream: str, html_root: Path | str = NGINX_DIR / "html",
                 max_upload_mb: float | str = 10, port: int | None = None, workers: int = 1,
                 admin_allow: str = "127.0.0.1"):
        self.prefix = Path(prefix)
        self.port = port or free_port()
        self.variables = nginx_variables(upstream, f"127.0.0.1:{self.port}", html_root, max_upload_mb,
                                         admin_allow=admin_allow)
        self.workers = workers
        self.url = f"http://127.0.0.1:{self.port}"
        self.binary = nginx_binary()

    def render(self) -> Path:
        return render_nginx(self.prefix, self.variables, self.workers, self.binary)

    def test_config(self) -> subprocess.CompletedProcess:
        conf = self.render()
        return subprocess.run([self.binary, "-t", "-p", str(self.prefix), "-c", str(conf)],
                              capture_output=True, text=True, timeout=30)

    def start(self, timeout: float = 20.0) -> "NginxProcess":
        if self.binary is None:
            raise FileNotFoundError("nginx is not installed")
        conf = self.render()
        self.log = self.prefix / "logs" / "stderr.log"
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([self.binary, "-p", str(self.prefix), "-c", str(conf), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=self._logf)
        wait_http(f"{self.url}/nginx-health", timeout, proc=self.proc, log=self.log)
        return self
