"""Start-up errors of the real ``kws-serve`` process: one line on stderr, exit code 2 (issue 22, item 7)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests.support.processes import free_port


def _serve(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("KWS_")}
    full.update({"KWS_MODEL_DIR": str(tmp_path / "no-bundle"), "KWS_HOST": "127.0.0.1", "KWS_RELOAD_S": "0", **env})
    return subprocess.run([sys.executable, "-m", "kws.serving.server", *args], env=full, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def _one_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [line for line in res.stderr.splitlines() if line.strip() and "kws-serve:" in line]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    return lines[0]


def test_port_in_use_is_one_line(tmp_path):
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:  # a real listener on that port
        taken.bind(("127.0.0.1", port))
        taken.listen()
        line = _one_line(_serve(tmp_path, KWS_PORT=str(port)))
    assert line == (f"kws-serve: port {port} on 127.0.0.1 is in use (another kws-serve?); stop that process or "
                    "choose another port (--port / KWS_PORT)")


@pytest.mark.parametrize("env,words", [
    ({"KWS_PORT": "abc"}, "KWS_PORT must be a whole number, got 'abc'"),
    ({"KWS_PORT": "70000"}, "KWS_PORT must be a port number 1..65535, got 70000"),
    ({"KWS_THREADS": "0"}, "KWS_THREADS must be at least 1, got 0"),
    ({"KWS_MAX_QUEUE": "-1"}, "KWS_MAX_QUEUE must be zero or positive, got -1"),
    ({"KWS_RUNTIME": "onnx"}, "KWS_RUNTIME must be one of auto, tflite, tflite_int8, keras, got 'onnx'"),
    ({"KWS_HOST": "192.0.2.77"}, "192.0.2.77 is not an address of this machine"),
])
def test_bad_settings_are_one_line(tmp_path, env, words):
    env.setdefault("KWS_PORT", str(free_port()))
    line = _one_line(_serve(tmp_path, **env))
    assert words in line, line


def _answer_in_a_new_process(bundle, clip) -> tuple[str, dict, bool]:
    code = ("import json, sys; from kws.serving.predictor import Predictor; from kws.audio import load_file; "
            f"p = Predictor({str(bundle)!r}); r = p.predict(load_file({str(clip)!r}, 16000)); "
            "print(json.dumps([p.describe()['frontend'], r['scores'], 'librosa' in sys.modules]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return tuple(json.loads(res.stdout.splitlines()[-1]))


def test_the_service_answers_without_importing_librosa(bundle, clips, tmp_path):
    """The bundle's pinned front end (frontend.npz) spares a serving process librosa's import, most of
    its start-up; a bundle without it is served the same, librosa computing the arrays."""
    from kws.features import FRONTEND_FILE

    old = tmp_path / "model"
    shutil.copytree(bundle, old)
    (old / FRONTEND_FILE).unlink()
    pinned, unpinned = (_answer_in_a_new_process(b, clips["one"][0]) for b in (bundle, old))
    assert (pinned[0], pinned[2]) == ("bundle", False)
    assert (unpinned[0], unpinned[2]) == ("librosa", True)
    assert pinned[1] == unpinned[1]
