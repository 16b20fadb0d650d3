"""The download stage against a real local HTTP server and real Speech Commands clips.

No network mocks: a ``http.server`` on 127.0.0.1 (:mod:`tests.support.archives`) serves tarballs
built here from the sample clips in ``../shared/data/speech_commands_sample``; it honours
``Range`` requests and can be told to drop the connection part-way through a response.
Archives refused or broken, and the dataset's atomic install: ``test_archive_install.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kws.config import compose, write_params
from kws.data.http import fetch_archive, part_path
from kws.data.install import info_path, materialize_dataset
from kws.errors import ChecksumError, DownloadError
from tests.support.archives import WORDS, leftovers, make_tar, needs_sample, sha, tree
from tests.support.processes import free_port

REPO = Path(__file__).resolve().parents[1]

pytestmark = [needs_sample, pytest.mark.usefixtures("no_proxy_for_localhost")]


# --- download + extract ---------------------------------------------------------------
def test_full_download_and_extract(server, tarball, clips, tmp_path):
    base, state = server
    state.files["/sc.tar.gz"] = tarball
    dest = tmp_path / "raw" / "speech_commands"

    info = materialize_dataset(f"{base}/sc.tar.gz", dest, sha256=sha(tarball), progress=False)

    assert info["sha256"] == sha(tarball)
    assert info["bytes"] == len(tarball)
    assert (info["n_files"], info["n_words"]) == (len(clips), len(WORDS))
    assert tree(dest) == clips
    assert json.loads(info_path(dest).read_text()) == info
    assert not list((tmp_path / "raw" / ".cache").iterdir()), "archive should be deleted after extraction"
    assert leftovers(dest.parent) == []


def test_nested_archive_is_unwrapped(tarball, clips, tmp_path):
    archive = tmp_path / "nested.tar.gz"
    archive.write_bytes(make_tar(clips, prefix="speech_commands_v0.02/"))
    dest = tmp_path / "raw" / "speech_commands"

    materialize_dataset(str(archive), dest, progress=False)

    assert tree(dest) == clips
    assert archive.exists(), "a local source archive is never deleted"


def test_interrupted_download_fails_then_resumes_with_range(server, tarball, tmp_path):
    base, state = server
    url = f"{base}/sc.tar.gz"
    state.files["/sc.tar.gz"] = tarball
    cut = len(tarball) // 2
    state.cut_after = cut
    dest = tmp_path / "raw" / "speech_commands"
    cache = tmp_path / "cache"

    with pytest.raises(DownloadError, match="rerun to resume"):
        materialize_dataset(url, dest, cache_dir=cache, sha256=sha(tarball), retries=0, progress=False)
    parts = list(cache.glob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == cut
    assert not dest.exists() and not info_path(dest).exists()
    assert leftovers(dest.parent) == []

    info = materialize_dataset(url, dest, cache_dir=cache, sha256=sha(tarball), retries=0, progress=False)

    assert state.requests[-1]["range"] == f"bytes={cut}-"
    assert info["sha256"] == sha(tarball)
    assert dest.is_dir() and not list(cache.iterdir())


def test_retry_resumes_within_one_call(server, tarball, tmp_path):
    base, state = server
    state.files["/sc.tar.gz"] = tarball
    state.cut_after = 1000
    dest_file = tmp_path / "sc.tar.gz"

    digest = fetch_archive(f"{base}/sc.tar.gz", dest_file, sha256=sha(tarball), retries=1, backoff=0, progress=False)

    assert digest == sha(tarball) and dest_file.read_bytes() == tarball
    assert [r.get("range") for r in state.requests] == [None, "bytes=1000-"]
    assert not part_path(dest_file).exists()


def test_server_ignoring_range_restarts_from_zero(server, tarball, tmp_path):
    base, state = server
    state.files["/sc.tar.gz"] = tarball
    state.ignore_range = True
    dest_file = tmp_path / "sc.tar.gz"
    part_path(dest_file).write_bytes(b"garbage that must not stay in front")

    assert fetch_archive(f"{base}/sc.tar.gz", dest_file, progress=False) == sha(tarball)
    assert state.requests[0]["range"].startswith("bytes=")
    assert dest_file.read_bytes() == tarball


def test_complete_part_is_verified_on_416(server, tarball, tmp_path):
    base, state = server
    state.files["/sc.tar.gz"] = tarball
    dest_file = tmp_path / "sc.tar.gz"
    part_path(dest_file).write_bytes(tarball)

    assert fetch_archive(f"{base}/sc.tar.gz", dest_file, sha256=sha(tarball), progress=False) == sha(tarball)
    assert state.requests[0]["range"] == f"bytes={len(tarball)}-"


def test_http_error_status_is_reported(server, tmp_path):
    base, _state = server
    with pytest.raises(DownloadError, match=r"HTTP 404 .*missing\.tar\.gz"):
        fetch_archive(f"{base}/missing.tar.gz", tmp_path / "x.tar.gz", progress=False)


def test_wrong_checksum_extracts_nothing(server, tarball, tmp_path):
    base, state = server
    url = f"{base}/sc.tar.gz"
    state.files["/sc.tar.gz"] = tarball
    dest = tmp_path / "raw" / "speech_commands"
    wrong = "0" * 64

    with pytest.raises(ChecksumError) as excinfo:
        materialize_dataset(url, dest, sha256=wrong, progress=False)

    assert wrong in str(excinfo.value) and sha(tarball) in str(excinfo.value) and url in str(excinfo.value)
    assert not dest.exists()
    assert leftovers(dest.parent) == []
    assert not list((dest.parent / ".cache").iterdir()), "the bad download is deleted"


def test_wrong_checksum_of_a_local_archive_keeps_it_and_installs_nothing(tarball, tmp_path):
    """The same check as for a download, but the archive is the user's: it is named, never deleted."""
    archive = tmp_path / "sc.tar.gz"
    archive.write_bytes(tarball)
    dest = tmp_path / "raw" / "speech_commands"
    wrong = "f" * 64

    with pytest.raises(ChecksumError) as excinfo:
        materialize_dataset(archive, dest, sha256=wrong.upper(), progress=False)

    message = str(excinfo.value)
    assert wrong in message and sha(tarball) in message and str(archive) in message
    assert "fix the archive" in message and "deleted" not in message
    assert archive.read_bytes() == tarball
    assert not dest.exists() and leftovers(dest.parent) == []
    # the right digest, in either case, installs it
    info = materialize_dataset(archive, dest, sha256=sha(tarball).upper(), progress=False)
    assert info["sha256"] == sha(tarball) and dest.is_dir()


def test_canonical_test_set_is_verified_then_installed_and_removed_when_unset(server, clips, tmp_path):
    """data.canonical_test (URL + sha256): a wrong digest installs nothing and leaves the folder
    as it was (the DVC output stays an empty folder); the right one installs ``<class>/*.wav``;
    unsetting it empties the folder again."""
    from omegaconf import OmegaConf

    from kws.stages.download import download_canonical

    base, state = server
    words = sorted({rel.split("/")[0] for rel in clips})
    classes = {words[0]: "_unknown_", words[1]: "_silence_"}  # the canonical layout's class folders
    layout = {f"./{classes.get(rel.split('/')[0], 'yes')}/{rel.split('/')[1]}": data for rel, data in clips.items()}
    state.files["/test_set.tar.gz"] = canonical = make_tar(layout)
    dest = tmp_path / "raw" / "canonical_test"
    dest.mkdir(parents=True)
    fetch = dict(cache_dir=None, keep_archive=False, progress=False, retries=0)

    def spec(sha256: str):
        return OmegaConf.create({"canonical_test": {"source": f"{base}/test_set.tar.gz", "sha256": sha256,
                                                    "size": len(canonical)}})

    with pytest.raises(ChecksumError, match="checksum mismatch"):
        download_canonical(spec("0" * 64), dest, fetch)
    assert dest.is_dir() and not any(dest.iterdir()), "a failed check left a partial test set"
    assert leftovers(dest.parent) == []

    info = download_canonical(spec(sha(canonical)), dest, fetch)
    assert info["sha256"] == sha(canonical)
    assert sorted(p.name for p in dest.iterdir()) == ["_silence_", "_unknown_", "yes"]
    assert sum(1 for _ in dest.rglob("*.wav")) == len(clips)

    assert download_canonical(OmegaConf.create({"canonical_test": None}), dest, fetch) is None
    assert dest.is_dir() and not any(dest.iterdir())


# --- the stage script ----------------------------------------------------------------------
def _python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


@pytest.fixture
def stage_dir(tmp_path) -> Path:
    """A working dir with a params.yaml composed from the project's conf/ (no checksum)."""
    write_params(compose(["data.sha256=null"], conf_dir=REPO / "conf"), tmp_path / "params.yaml")
    return tmp_path


def _run_stage(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [_python(), "-m", "kws.stages.download", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
    )


def test_stage_script_end_to_end(server, tarball, clips, stage_dir):
    base, state = server
    state.files["/x.tar.gz"] = tarball
    dest = stage_dir / "data" / "raw" / "speech_commands"

    proc = _run_stage(stage_dir, "--source", f"{base}/x.tar.gz", "--dest", str(dest))

    assert proc.returncode == 0, proc.stderr
    info = json.loads((stage_dir / "data" / "raw" / "speech_commands.json").read_text())
    assert info["sha256"] == sha(tarball) and info["source"] == f"{base}/x.tar.gz"
    assert tree(dest) == clips

    rerun = _run_stage(stage_dir, "--source", f"{base}/x.tar.gz", "--dest", str(dest))
    assert rerun.returncode == 0 and "already downloaded" in rerun.stderr


def test_stage_script_unreachable_url_fails_cleanly(stage_dir):
    url = f"http://127.0.0.1:{free_port()}/x.tar.gz"
    dest = stage_dir / "data" / "raw" / "speech_commands"

    proc = _run_stage(stage_dir, "--source", url, "--dest", str(dest), "--retries", "0")

    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot reach 127.0.0.1" in errors[0] and url in errors[0]
    # ... and it names the offline ways to run the pipeline (README's offline path).
    assert "kws-params data=speech_commands_real && dvc repro" in errors[0], errors[0]
    assert "kws-params data=synthetic && dvc repro" in errors[0], errors[0]
    assert not dest.exists()
