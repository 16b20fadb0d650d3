"""A file's sha256 and the one check of it against a configured digest."""

from __future__ import annotations

import hashlib
from pathlib import Path

from kws.errors import ChecksumError

CHUNK_SIZE = 1 << 20


def sha256_file(path: str | Path, chunk_size: int = CHUNK_SIZE) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str | None, *, source: str, delete: bool = False) -> str:
    """Return the sha256 of ``path``; raise :class:`ChecksumError` when ``expected`` is given
    and differs.

    ``source`` is what the user configured (a URL or path), named in the message. ``delete``:
    the file is a download of ours, removed on a mismatch so that a rerun fetches it afresh
    (never set it for the user's own archive).
    """
    actual = sha256_file(path)
    if not expected or actual == expected.lower():
        return actual
    if delete:
        Path(path).unlink(missing_ok=True)
        remedy = "the bad file was deleted; rerun to download it again, or fix"
    else:
        remedy = "fix the archive or"
    raise ChecksumError(
        f"checksum mismatch for {source}: expected sha256 {expected.lower()}, got {actual}; "
        f"{remedy} the configured sha256 (data.sha256, or the entry's sha256; null skips the check)"
    )
