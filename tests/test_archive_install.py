"""Archives the download stage refuses or cannot read (unsafe members, a cut file, another
layout) and the dataset's install: a folder source, a second run that skips, a new source that
replaces the old dataset, an interrupted install that keeps it. Nothing half-written is left."""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

import pytest

from kws.data.archive import check_members, safe_extract
from kws.data.install import build_dataset_atomically, info_path, materialize_dataset, tree_digest
from kws.errors import DatasetError, DownloadError, UnsafeArchiveError
from tests.support.archives import SAMPLE, WORDS, leftovers, make_tar, needs_sample, tree

pytestmark = needs_sample


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
    archive.write_bytes(make_tar(clips, extra=evil))
    work = tmp_path / "work"
    dest = work / "raw" / "speech_commands"

    with pytest.raises(UnsafeArchiveError) as excinfo:
        materialize_dataset(str(archive), dest, progress=False)

    assert repr(evil[0].name) in str(excinfo.value)
    assert not dest.exists()
    assert leftovers(dest.parent) == []
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz", "outside", "work"]


def test_safe_extract_writes_nothing_for_unsafe_archive(clips, tmp_path):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(make_tar(clips, extra=_evil_members(tmp_path)["dotdot"]))
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
    assert leftovers(dest.parent) == []


def test_archive_without_the_layout_is_refused(tmp_path):
    archive = tmp_path / "other.tar.gz"
    archive.write_bytes(make_tar({"README.md": b"not speech commands", "docs/a.txt": b"x"}))
    dest = tmp_path / "raw" / "speech_commands"

    with pytest.raises(DatasetError, match="does not contain the Speech Commands layout"):
        materialize_dataset(str(archive), dest, progress=False)
    assert not dest.exists() and leftovers(dest.parent) == []


# --- folder source and skipping ------------------------------------------------------------
def test_folder_source_then_second_run_skips(tmp_path, caplog):
    dest = tmp_path / "raw" / "speech_commands"

    info = materialize_dataset(str(SAMPLE), dest, progress=False)

    assert info["sha256"] == tree_digest(SAMPLE)
    assert info["n_words"] == len(WORDS)
    assert tree(dest).keys() == tree(SAMPLE).keys()
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
    assert tree(dest) == clips  # the folder's _background_noise_ is gone
    assert leftovers(dest.parent) == []


def test_interrupted_install_keeps_previous_dataset(tmp_path):
    dest = tmp_path / "raw" / "speech_commands"
    materialize_dataset(str(SAMPLE), dest, progress=False)
    before = tree(dest).keys()

    def build(tmp: Path) -> None:
        (tmp / "yes").mkdir()
        (tmp / "yes" / "half.wav").write_bytes(b"RIFF")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_dataset_atomically(dest, build)

    assert tree(dest).keys() == before
    assert info_path(dest).exists()
    assert leftovers(dest.parent) == []
