"""Helpers shared by the serving tests and ``benchmarks/bench_serving.py``.

* :func:`build_tiny_bundle` trains a SMALL REAL model on the real Speech Commands clips in
  ``../shared/data/speech_commands_sample`` (read in place, never copied) and writes a
  complete serving bundle with :func:`kws.bundle.write_bundle` — seconds on two cores.
* :func:`render_nginx` renders ``nginx/templates/default.conf.template`` exactly like the
  official nginx image does (``envsubst`` restricted to the ``KWS_*`` variables) plus the
  small native main-config wrapper ``nginx/native.conf.template``.
* :class:`ApiProcess` / :class:`NginxProcess` run the real Waitress server and the real
  nginx on free loopback ports and tear them down.

Nothing here is imported by the service itself.
"""

from __future__ import annotations

import functools
import getpass
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[3]
SAMPLE_DIR = REPO.parent / "shared" / "data" / "speech_commands_sample"
NGINX_DIR = REPO / "nginx"
TEMPLATE = NGINX_DIR / "templates" / "default.conf.template"
NATIVE_WRAPPER = NGINX_DIR / "native.conf.template"

log = logging.getLogger(__name__)

TINY_LABELS = ("_silence_", "_unknown_", "one", "two", "three")
SR = 16000


# --------------------------------------------------------------------------- data + model
def _load(path: Path) -> np.ndarray:
    from kws.audio import load_file

    return load_file(path, SR)


def _noise_segment(noises: list[np.ndarray], rng: np.random.Generator, n: int) -> np.ndarray:
    noise = noises[rng.integers(len(noises))]
    start = rng.integers(0, len(noise) - n)
    seg = noise[start:start + n]
    return seg / (np.sqrt(np.mean(seg**2)) + 1e-9)


def _band_limit(x: np.ndarray, rate: int) -> np.ndarray:
    """What a recording made at ``rate`` Hz sounds like once resampled to 16 kHz."""
    from kws.audio import resample

    return resample(resample(x, SR, rate), rate, SR)[: len(x)]


def _augment(clip, noises, rng, max_shift: int, snr_db: tuple[float, float]) -> np.ndarray:
    from kws.audio import snr_gain, time_shift

    x = time_shift(clip, int(rng.integers(-max_shift, max_shift + 1))) * rng.uniform(0.5, 1.5)
    if rng.random() < 0.3:  # some copies as if recorded at 8 kHz (phones, old recorders)
        x = _band_limit(x, 8000)
    snr = rng.uniform(*snr_db)
    seg = _noise_segment(noises, rng, len(x))
    x = x + seg * snr_gain(float(np.mean(x**2)), float(np.mean(seg**2)), snr)
    return np.clip(x, -1, 1).astype(np.float32)


def tiny_dataset(
    sample_dir: Path = SAMPLE_DIR,
    labels: Sequence[str] = TINY_LABELS,
    copies: int = 24,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Waveforms ``(n, 16000)`` and label ids from the real clips, with shift/gain/noise copies.

    ``_silence_`` = background-noise segments at random (mostly low) levels; ``_unknown_`` =
    the digits that are not in ``labels``; every keyword clip gets ``copies`` augmented copies.
    """
    from kws.audio import fix_length
    from kws.labels import BACKGROUND_NOISE_DIR, SILENCE, UNKNOWN

    sample_dir = Path(sample_dir)
    rng = np.random.default_rng(seed)
    noises = [_load(p) for p in sorted((sample_dir / BACKGROUND_NOISE_DIR).glob("*.wav"))]
    if not noises:
        raise FileNotFoundError(f"no background noise recordings under {sample_dir / BACKGROUND_NOISE_DIR}")
    words = sorted(d.name for d in sample_dir.iterdir() if d.is_dir() and not d.name.startswith("_"))
    keywords = [w for w in labels if w not in (SILENCE, UNKNOWN)]
    missing = [w for w in keywords if w not in words]
    if missing:
        raise FileNotFoundError(f"no clips for {missing} under {sample_dir}")
    waves, ys = [], []
    max_shift = SR // 5
    for word in words:
        if word in keywords:
            y, n_copies = labels.index(word), copies
        elif UNKNOWN in labels:
            y, n_copies = labels.index(UNKNOWN), max(2, copies // 4)
        else:
            continue
        for path in sorted((sample_dir / word).glob("*.wav")):
            clip = fix_length(_load(path), SR)
            waves.append(clip)
            ys.append(y)
            for _ in range(n_copies):
                waves.append(_augment(clip, noises, rng, max_shift, (5.0, 30.0)))
                ys.append(y)
    if SILENCE in labels:
        n_silence = max(1, len(ys) // len(labels))
        for i in range(n_silence):
            level = 10 ** rng.uniform(-3.5, -0.7) if i % 4 else 10 ** rng.uniform(-5, -3)
            waves.append((_noise_segment(noises, rng, SR) * level).astype(np.float32))
            ys.append(labels.index(SILENCE))
    return np.stack(waves).astype(np.float32), np.asarray(ys, dtype=np.int64)


def build_tiny_bundle(
    out_dir: str | Path,
    sample_dir: str | Path = SAMPLE_DIR,
    labels: Sequence[str] = TINY_LABELS,
    epochs: int = 12,
    copies: int = 24,
    seed: int = 0,
    architecture: str = "cnn_seed",
    int8: bool = False,
) -> Path:
    """Train a tiny real model on the real clips and write a complete serving bundle to ``out_dir``
    (with ``int8``: also ``model_int8.tflite``, calibrated and checked on the training clips)."""
    import keras

    from kws.bundle import write_bundle
    from kws.features import FeatureConfig, extract
    from kws.models import build_model

    labels = list(labels)
    cfg = FeatureConfig()
    waves, y = tiny_dataset(Path(sample_dir), labels, copies=copies, seed=seed)
    x = extract(waves, cfg)
    keras.utils.set_random_seed(seed)
    model = build_model({"name": architecture, "dropout": 0.2, "l2": 1e-4}, cfg.shape, len(labels), x)
    for layer in model.layers:  # a few hundred steps only: let BatchNorm's moving statistics converge
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.8
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    hist = model.fit(x[..., None], y, epochs=epochs, batch_size=32, shuffle=True, verbose=0)
    seconds = time.perf_counter() - t0
    metrics = {"train_accuracy": float(hist.history["accuracy"][-1]), "train_examples": int(len(y))}
    info = {
        "name": "kws-tiny", "version": "test-1", "alias": "test", "run_id": None,
        "architecture": architecture, "dataset": "speech_commands_sample", "train_seconds": round(seconds, 2),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    extra = {"representative": x, "check": (x, y)} if int8 else {}
    return Path(write_bundle(out_dir, model, labels, cfg, metrics=metrics, info=info, **extra))


def keyword_clips(sample_dir: str | Path = SAMPLE_DIR, labels: Sequence[str] = TINY_LABELS) -> dict[str, list[Path]]:
    """Real clip paths per keyword of ``labels`` (not silence/unknown)."""
    return {w: sorted((Path(sample_dir) / w).glob("*.wav")) for w in labels if not w.startswith("_")}


def wav_bytes(samples: np.ndarray, sample_rate: int = SR, subtype: str = "PCM_16") -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def long_recording(
    placements: Sequence[tuple[float, Path]],
    duration_s: float = 30.0,
    sample_dir: str | Path = SAMPLE_DIR,
    noise_level: float = 0.003,
    seed: int = 0,
) -> np.ndarray:
    """A recording of ``duration_s`` seconds: real clips placed at ``(start_s, path)`` on a low noise bed."""
    from kws.labels import BACKGROUND_NOISE_DIR

    rng = np.random.default_rng(seed)
    n = int(round(duration_s * SR))
    noise = _load(Path(sample_dir) / BACKGROUND_NOISE_DIR / "pink_noise.wav")
    reps = int(np.ceil(n / len(noise)))
    bed = np.tile(noise, reps)[:n]
    bed = bed / (np.sqrt(np.mean(bed**2)) + 1e-9) * noise_level
    out = bed.astype(np.float32) + rng.normal(0, noise_level / 10, n).astype(np.float32)
    for start_s, path in placements:
        clip = _load(path)
        i = int(round(start_s * SR))
        out[i:i + len(clip)] += clip[: max(0, n - i)]
    return np.clip(out, -1, 1).astype(np.float32)


# --------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, ok=(200,), proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``url`` until it answers one of ``ok``; fail early if ``proc`` exits."""
    import requests

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.is_file() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready:\n{tail}")
        try:
            r = requests.get(url, timeout=2)
            if r.status_code in ok:
                return
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except requests.RequestException as err:
            last = str(err)
        time.sleep(0.1)
    tail = log.read_text()[-3000:] if log and log.is_file() else ""
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s ({last})\n{tail}")


class _Process:
    proc: subprocess.Popen | None = None
    stop_signal = signal.SIGTERM
    _logf = None  # the log file the process writes to, closed on stop

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._logf is not None:
            self._logf.close()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()  # a server that started but never became ready must not outlive the failure
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


class ApiProcess(_Process):
    """``python -m kws.serving.server`` (real Waitress) on a free 127.0.0.1 port."""

    def __init__(self, model_dir: Path, workdir: Path, env: Mapping[str, str] | None = None,
                 port: int | None = None, module: str = "kws.serving.server", args: Sequence[str] = ()):
        self.model_dir = Path(model_dir)
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.extra_env = dict(env or {})
        self.module = module
        self.args = list(args)
        self.log = self.workdir.parent / f"{self.workdir.name}.log"
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> "ApiProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        env = dict(os.environ)
        env.update({
            "KWS_MODEL_DIR": str(self.model_dir), "KWS_HOST": "127.0.0.1", "KWS_PORT": str(self.port),
            "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
        })
        env.update(self.extra_env)
        run_dir = self.workdir / "cwd"
        run_dir.mkdir(exist_ok=True)
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args], cwd=run_dir, env=env,
                                     stdout=self._logf, stderr=subprocess.STDOUT)
        wait_http(f"{self.url}/ready", timeout, proc=self.proc, log=self.log)
        return self

    @property
    def tmpdir(self) -> Path:
        return self.workdir / "tmp"

    @property
    def cwd(self) -> Path:
        return self.workdir / "cwd"


def nginx_binary() -> str | None:
    import shutil

    for cand in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def envsubst(text: str, variables: Mapping[str, str]) -> str:
    """``envsubst`` restricted to ``variables`` (as the nginx image's NGINX_ENVSUBST_FILTER=KWS_ does):
    ``$NAME``/``${NAME}`` of those names are replaced, every other ``$...`` (nginx variables) stays."""

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return str(variables[name]) if name in variables else m.group(0)

    return _VAR.sub(repl, text)


# The server parameter "resolve" of the upstream (re-resolve a name while running) is in nginx
# open source since 1.27.3; the image has 1.28, Debian 12's nginx is 1.22.
RESOLVE_MIN_NGINX = (1, 27, 3)


def nginx_variables(upstream: str, listen: str, html_root: Path | str, max_upload_mb: float | str = 10,
                    resolver: str = "127.0.0.1", timeout: str = "60s", resolve: str = "",
                    admin_allow: str = "127.0.0.1") -> dict[str, str]:
    """The variables of ``default.conf.template`` (docker-compose.yml sets the same names).

    ``max_upload_mb`` is the api's ``KWS_MAX_UPLOAD_MB`` (the same number serves both);
    ``admin_allow`` the addresses that may read /metrics, /openapi.json and /admin/
    (the tests talk to nginx from 127.0.0.1)."""
    return {
        "KWS_API_UPSTREAM": upstream, "KWS_UPSTREAM_RESOLVE": resolve, "KWS_LISTEN": listen,
        "KWS_HTML_ROOT": str(html_root), "KWS_MAX_UPLOAD_MB": f"{float(max_upload_mb):g}",
        "KWS_RESOLVER": resolver, "KWS_PROXY_TIMEOUT": timeout, "KWS_ADMIN_ALLOW": admin_allow,
    }


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


def admin_allow_rules(value: str) -> str:
    """``"127.0.0.1, 10.0.0.0/8"`` -> ``"127.0.0.1; allow 10.0.0.0/8"`` for the template's
    ``allow ${KWS_ADMIN_ALLOW};`` -- what ``nginx/templates/15-kws-admin-allow.envsh`` does in the image."""
    items = [a for a in re.split(r"[\s,;]+", str(value)) if a]
    return "; allow ".join(items) or "127.0.0.1"


def image_render_steps(variables: Mapping[str, str], version: tuple[int, ...] | None) -> dict[str, str]:
    """The values as the template gets them at render time: the list of KWS_ADMIN_ALLOW made
    into ``allow`` rules (the image's .envsh), and "resolve" dropped from KWS_UPSTREAM_RESOLVE
    for an nginx older than 1.27.3 (which rejects it) -- logged, the upstream then stays the
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


class NginxProcess(_Process):
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


def dump_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
