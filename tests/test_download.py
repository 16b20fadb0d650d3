"""The download stage against a real local HTTP server and real Speech Commands clips.

No network mocks: a ``http.server`` on 127.0.0.1 serves tarballs built here from the
sample clips in ``../shared/data/speech_commands_sample``; it honours ``Range`` requests
and can be told to drop the connection part-way through a response.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from kws.config import compose, write_params
from kws.errors import ChecksumError, DatasetError, DownloadError, UnsafeArchiveError
from kws.data.archive import check_members, safe_extract
from kws.data.http import fetch_archive, part_path
from kws.data.install import build_dataset_atomically, info_path, materialize_dataset, tree_digest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "speech_commands_sample"
WORDS = sorted(p.name for p in SAMPLE.iterdir() if p.is_dir() and not p.name.startswith("_")) if SAMPLE.is_dir() else []

pytestmark = pytest.mark.skipif(
    not WORDS, reason=f"Speech Commands sample clips not found at {SAMPLE} (shared data not checked out)"
)


# --- a real HTTP server ------------------------------------------------------------
@dataclass
class ServerState:
    """What the server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: int | None = None  # drop the connection after this many body bytes, once
    ignore_range: bool = False  # answer 200 with the whole file even to a Range request
    requests: list[dict[str, str]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        state.requests.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404, "not found")
            return
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and not state.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if state.cut_after is not None:
            cut, state.cut_after = state.cut_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True  # the socket closes before Content-Length bytes
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    """(base URL, state) of a threaded HTTP server on a free local port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = ServerState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.state  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy_for_localhost(monkeypatch):
    """A proxy configured in the environment must not intercept the local test server."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- archives built from the real clips -----------------------------------------------
def _sample_files() -> dict[str, bytes]:
    """Relative path -> bytes of the sample's word clips (the noise files are left out: size)."""
    return {
        f"{word}/{clip.name}": clip.read_bytes()
        for word in WORDS
        for clip in sorted((SAMPLE / word).glob("*.wav"))
    }


def _make_tar(files: dict[str, bytes], *, prefix: str = "", extra: list[tarfile.TarInfo] = ()) -> bytes:
    """A .tar.gz of ``files`` (under ``prefix``), then the ``extra`` members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(prefix + rel)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"pwned") if info.isreg() else None)
    return buf.getvalue()


@pytest.fixture(scope="module")
def clips() -> dict[str, bytes]:
    return _sample_files()


@pytest.fixture(scope="module")
def tarball(clips: dict[str, bytes]) -> bytes:
    return _make_tar(clips)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    """Temp or half-written dataset dirs next to the destination."""
    if not parent.exists():
        return []
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# --- download + extract ---------------------------------------------------------------
def test_full_download_and_extract(server, tarball, clips, tmp_path):
    base, state = server
    state.files["/sc.tar.gz"] = tarball
    dest = tmp_path / "raw" / "speech_commands"

    info = materialize_dataset(f"{base}/sc.tar.gz", dest, sha256=_sha(tarball), progress=False)

    assert info["sha256"] == _sha(tarball)
    assert info["bytes"] == len(tarball)
    assert (info["n_files"], info["n_words"]) == (len(clips), len(WORDS))
    assert _tree(dest) == clips
    assert json.loads(info_path(dest).read_text()) == info
    assert not list((tmp_path / "raw" / ".cache").iterdir()), "archive should be deleted after extraction"
    assert _leftovers(dest.parent) == []


def test_nested_archive_is_unwrapped(tarball, clips, tmp_path):
    archive = tmp_path / "nested.tar.gz"
    archive.write_bytes(_make_tar(clips, prefix="speech_commands_v0.02/"))
    dest = tmp_path / "raw" / "speech_commands"

    materialize_dataset(str(archive), dest, progress=False)

    assert _tree(dest) == clips
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
        materialize_dataset(url, dest, cache_dir=cache, sha256=_sha(tarball), retries=0, progress=False)
    parts = list(cache.glob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == cut
    assert not dest.exists() and not info_path(dest).exists()
    assert _leftovers(dest.parent) == []

    info = materialize_dataset(url, dest, cache_dir=cache, sha256=_sha(tarball), retries=0, progress=False)

    assert state.requests[-1]["range"] == f"bytes={cut}-"
    assert info["sha256"] == _sha(tarball)
    assert dest.is_dir() and not list(cache.iterdir())


def test_retry_resumes_within_one_call(server, tarball, tmp_path):
    base, state = server
    state.files["/sc.tar.gz"] = tarball
    state.cut_after = 1000
    dest_file = tmp_path / "sc.tar.gz"

    digest = fetch_archive(f"{base}/sc.tar.gz", dest_file, sha256=_sha(tarball), retries=1, backoff=0, progress=False)

    assert digest == _sha(tarball) and dest_file.read_bytes() == tarball
    assert [r.get("range") for r in state.requests] == [None, "bytes=1000-"]
    assert not part_path(dest_file).exists()


def test_server_ignoring_range_restarts_from_zero(server, tarball, tmp_path):
    base, state = server
    state.files["/sc.tar.gz"] = tarball
    state.ignore_range = True
    dest_file = tmp_path / "sc.tar.gz"
    part_path(dest_file).write_bytes(b"garbage that must not stay in front")

    assert fetch_archive(f"{base}/sc.tar.gz", dest_file, progress=False) == _sha(tarball)
    assert state.requests[0]["range"].startswith("bytes=")
    assert dest_file.read_bytes() == tarball


def test_complete_part_is_verified_on_416(server, tarball, tmp_path):
    base, state = server
    state.files["/sc.tar.gz"] = tarball
    dest_file = tmp_path / "sc.tar.gz"
    part_path(dest_file).write_bytes(tarball)

    assert fetch_archive(f"{base}/sc.tar.gz", dest_file, sha256=_sha(tarball), progress=False) == _sha(tarball)
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

    assert wrong in str(excinfo.value) and _sha(tarball) in str(excinfo.value) and url in str(excinfo.value)
    assert not dest.exists()
    assert _leftovers(dest.parent) == []
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
    assert wrong in message and _sha(tarball) in message and str(archive) in message
    assert "fix the archive" in message and "deleted" not in message
    assert archive.read_bytes() == tarball
    assert not dest.exists() and _leftovers(dest.parent) == []
    # the right digest, in either case, installs it
    info = materialize_dataset(archive, dest, sha256=_sha(tarball).upper(), progress=False)
    assert info["sha256"] == _sha(tarball) and dest.is_dir()


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
    state.files["/test_set.tar.gz"] = canonical = _make_tar(layout)
    dest = tmp_path / "raw" / "canonical_test"
    dest.mkdir(parents=True)
    fetch = dict(cache_dir=None, keep_archive=False, progress=False, retries=0)

    def spec(sha256: str):
        return OmegaConf.create({"canonical_test": {"source": f"{base}/test_set.tar.gz", "sha256": sha256,
                                                    "size": len(canonical)}})

    with pytest.raises(ChecksumError, match="checksum mismatch"):
        download_canonical(spec("0" * 64), dest, fetch)
    assert dest.is_dir() and not any(dest.iterdir()), "a failed check left a partial test set"
    assert _leftovers(dest.parent) == []

    info = download_canonical(spec(_sha(canonical)), dest, fetch)
    assert info["sha256"] == _sha(canonical)
    assert sorted(p.name for p in dest.iterdir()) == ["_silence_", "_unknown_", "yes"]
    assert sum(1 for _ in dest.rglob("*.wav")) == len(clips)

    assert download_canonical(OmegaConf.create({"canonical_test": None}), dest, fetch) is None
    assert dest.is_dir() and not any(dest.iterdir())


# --- unsafe and broken archives -----------------------------------------------------------
def _evil_members(outside: Path) -> dict[str, list[tarfile.TarInfo]]:
    def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, link, 5 if kind == tarfile.REGTYPE else 0
        return info

    return {
        "dotdot": [member("../evil")],
        "absolute": [member(str(outside / "abs_evil"))],
        "symlink": [member("one/escape", tarfile.SYMTYPE, "../../outside")],
        "abs_symlink": [member("one/escape", tarfile.SYMTYPE, str(outside))],
        "hardlink": [member("one/hard", tarfile.LNKTYPE, "../outside/target")],
        "device": [member("one/dev", tarfile.CHRTYPE)],
    }


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "abs_symlink", "hardlink", "device"])
def test_unsafe_archive_is_refused_before_extracting(case, clips, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = _evil_members(outside)[case]
    archive = tmp_path / "evil.tar.gz"
    # the evil member comes LAST: nothing at all may be extracted before it is seen
    archive.write_bytes(_make_tar(clips, extra=evil))
    work = tmp_path / "work"
    dest = work / "raw" / "speech_commands"

    with pytest.raises(UnsafeArchiveError) as excinfo:
        materialize_dataset(str(archive), dest, progress=False)

    assert repr(evil[0].name) in str(excinfo.value)
    assert not dest.exists()
    assert _leftovers(dest.parent) == []
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz", "outside", "work"]


def test_safe_extract_writes_nothing_for_unsafe_archive(clips, tmp_path):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(_make_tar(clips, extra=_evil_members(tmp_path)["dotdot"]))
    out = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=r"\.\./evil"):
        safe_extract(archive, out)
    assert not out.exists() and not (tmp_path / "evil").exists()


def test_writing_through_a_contained_symlink_is_refused():
    link = tarfile.TarInfo("one/inner")
    link.type, link.linkname = tarfile.SYMTYPE, "."
    with pytest.raises(UnsafeArchiveError, match="through a symlink"):
        check_members([link, tarfile.TarInfo("one/inner/file.wav")])


def test_truncated_archive_is_a_clean_error(tarball, tmp_path):
    archive = tmp_path / "half.tar.gz"
    archive.write_bytes(tarball[: len(tarball) // 2])
    dest = tmp_path / "raw" / "speech_commands"

    with pytest.raises((DownloadError, DatasetError), match="corrupt"):
        materialize_dataset(str(archive), dest, progress=False)

    assert not dest.exists()
    assert _leftovers(dest.parent) == []


def test_archive_without_the_layout_is_refused(tmp_path):
    archive = tmp_path / "other.tar.gz"
    archive.write_bytes(_make_tar({"README.md": b"not speech commands", "docs/a.txt": b"x"}))
    dest = tmp_path / "raw" / "speech_commands"

    with pytest.raises(DatasetError, match="does not contain the Speech Commands layout"):
        materialize_dataset(str(archive), dest, progress=False)
    assert not dest.exists() and _leftovers(dest.parent) == []


# --- folder source and skipping ------------------------------------------------------------
def test_folder_source_then_second_run_skips(tmp_path, caplog):
    dest = tmp_path / "raw" / "speech_commands"

    info = materialize_dataset(str(SAMPLE), dest, progress=False)

    assert info["sha256"] == tree_digest(SAMPLE)
    assert info["n_words"] == len(WORDS)
    assert _tree(dest).keys() == _tree(SAMPLE).keys()
    before = dest.stat()

    with caplog.at_level(logging.INFO, logger="kws.data.install"):
        again = materialize_dataset(str(SAMPLE), dest, sha256=info["sha256"], progress=False)

    assert again == info
    assert "already downloaded" in caplog.text
    after = dest.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_new_source_replaces_previous_dataset(tarball, clips, tmp_path):
    dest = tmp_path / "raw" / "speech_commands"
    materialize_dataset(str(SAMPLE), dest, progress=False)
    archive = tmp_path / "sc.tar.gz"
    archive.write_bytes(tarball)

    info = materialize_dataset(str(archive), dest, progress=False)

    assert info["source"] == str(archive)
    assert _tree(dest) == clips  # the folder's _background_noise_ is gone
    assert _leftovers(dest.parent) == []


def test_interrupted_install_keeps_previous_dataset(tmp_path):
    dest = tmp_path / "raw" / "speech_commands"
    materialize_dataset(str(SAMPLE), dest, progress=False)
    before = _tree(dest).keys()

    def build(tmp: Path) -> None:
        (tmp / "yes").mkdir()
        (tmp / "yes" / "half.wav").write_bytes(b"RIFF")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_dataset_atomically(dest, build)

    assert _tree(dest).keys() == before
    assert info_path(dest).exists()
    assert _leftovers(dest.parent) == []


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
    assert info["sha256"] == _sha(tarball) and info["source"] == f"{base}/x.tar.gz"
    assert _tree(dest) == clips

    rerun = _run_stage(stage_dir, "--source", f"{base}/x.tar.gz", "--dest", str(dest))
    assert rerun.returncode == 0 and "already downloaded" in rerun.stderr


def test_stage_script_unreachable_url_fails_cleanly(stage_dir):
    url = f"http://127.0.0.1:{_free_port()}/x.tar.gz"
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
