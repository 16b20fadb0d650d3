"""Multipart uploads whose part headers are not UTF-8 (a Latin-1 file name, say) are still read.

Werkzeug decodes each part's headers as strict UTF-8; one byte that is not (``\\xe9`` of a
Latin-1 "été.wav") makes it drop the WHOLE form, and the upload looks absent. The file name is
only ever shown back to the client (never used as a path), so any bytes are fine: a part
header block that is not UTF-8 is read as ISO-8859-1, the historical charset of HTTP header
fields, which maps every byte to a character.
"""

from __future__ import annotations

import io
import re
from typing import IO, Any

from werkzeug.formparser import FormDataParser


def _as_utf8(block: bytes) -> bytes:
    try:
        block.decode("utf-8")
        return block
    except UnicodeDecodeError:
        return block.decode("iso-8859-1").encode("utf-8")


def utf8_part_headers(body: bytes, boundary: bytes) -> bytes:
    """``body`` with every part's header block re-encoded to UTF-8 (blocks already UTF-8 are kept)."""
    delimiter = re.compile(b"(?m)(^--" + re.escape(boundary) + b"[^\r\n]*\r?\n)")
    pieces = delimiter.split(body)
    for i in range(2, len(pieces), 2):  # [preamble, delimiter, part, delimiter, part, ...]
        head, sep, rest = pieces[i].partition(b"\r\n\r\n")
        if sep:
            pieces[i] = _as_utf8(head) + sep + rest
    return b"".join(pieces)


class LenientFormDataParser(FormDataParser):
    def _parse_multipart(self, stream: IO[bytes], mimetype: str, content_length: int | None,
                         options: dict[str, str]) -> Any:
        body = stream.read()  # in memory anyway (InMemoryRequest), bounded by MAX_CONTENT_LENGTH
        try:
            return super()._parse_multipart(io.BytesIO(body), mimetype, content_length, options)
        except UnicodeDecodeError:
            boundary = options.get("boundary", "").encode("latin-1")
            fixed = utf8_part_headers(body, boundary)
            return super()._parse_multipart(io.BytesIO(fixed), mimetype, len(fixed), options)
