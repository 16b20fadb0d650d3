"""``serving/requirements.txt`` is enough for the API image, which has no TensorFlow: a prediction
in a Python that cannot import anything outside those requirements and their dependencies, and
the pins are the versions tested here."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
import textwrap
from importlib import metadata
from pathlib import Path

from tests.support.bundles import long_recording, wav_bytes
from tests.support.paths import REPO

REQUIREMENTS = REPO / "serving" / "requirements.txt"


def requirement_pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


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

    app = create_app({"model_dir": sys.argv[1], "runtime": "tflite", "preload": True})
    client = app.test_client()
    answers = []
    for name, data in (("clip.wav", open(sys.argv[2], "rb").read()),
                       ("long.wav", open(sys.argv[4], "rb").read())):
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
    long_wav = tmp_path / "long.wav"  # made here: the test harness is not in the image
    long_wav.write_bytes(wav_bytes(long_recording([(1.0, clips["two"][0])], duration_s=3.0)))
    res = subprocess.run([sys.executable, "-c", PROBE, str(bundle), str(clips["two"][0]), json.dumps(blocked),
                          str(long_wav)],
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
    assert {"flask", "waitress", "ai-edge-litert", "soundfile"} <= set(needed), sorted(needed)
    # the bundle's pinned front end (frontend.npz): no librosa at serving time (it stays in the
    # requirements for bundles exported without that file)
    assert "librosa" not in needed, sorted(needed)
    missing = {d: sorted(m) for d, m in needed.items() if d not in allowed}
    assert not missing, f"imported at serving time but not in serving/requirements.txt (nor their deps): {missing}"


def test_serving_requirements_pin_the_tested_versions():
    pins = requirement_pins()
    assert pins, REQUIREMENTS
    assert not {"tensorflow", "tensorflow-cpu", "keras"} & set(pins)
    wrong = {name: (pin, metadata.version(name)) for name, pin in pins.items() if metadata.version(name) != pin}
    assert not wrong, f"serving/requirements.txt pins differ from the tested environment (pin, installed): {wrong}"
