"""Multipart uploads whose part headers are not UTF-8 (a Latin-1 file name, say) are still read.

Werkzeug decodes each part's headers as strict UTF-8; one byte that is not (``\\xe9`` of a
Latin-1 "été.wav") makes it drop the WHOLE form, and the upload looks absent. The file name is
only ever shown back to the client (never used as a path), so any bytes are fine: a part
header block that is not UTF-8 is read as ISO-8859-1, the historical charset of HTTP header
fields, which maps every byte to a character.

Werkzeug also compiles two regular expressions from the form's boundary for every request, and
clients (browsers, curl, requests) draw a new boundary for every request, so ``re``'s cache never
hits: about 0.3 ms of CPU per upload, as much as the clip's features. The body is in memory
anyway, so its delimiters are renamed to one of :data:`FIXED_BOUNDARIES` (the first that does not
occur in it) and Werkzeug parses it with expressions compiled once (:func:`with_fixed_boundary`).
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


#: None holds "-", CR or LF, and none has a proper prefix that is also its suffix (its "K" is the
#: only one), so after renaming, the name occurs exactly where a delimiter was renamed.
FIXED_BOUNDARIES = tuple(b"KwsFixedBoundary%dZ" % i for i in range(4))


def with_fixed_boundary(body: bytes, boundary: bytes) -> tuple[bytes, bytes]:
    """``(body, boundary)`` with every delimiter of ``boundary`` renamed to a fixed boundary that
    the body does not contain. Only a conformant body is renamed (each ``--boundary`` at a line
    start and followed by ``--``, blanks or a line break, as Werkzeug's expressions want it);
    any other is returned as it is, for Werkzeug to parse (or refuse) as before."""
    if not boundary or b"\r" in boundary or b"\n" in boundary:
        return body, boundary
    fixed = next((f for f in FIXED_BOUNDARIES if f not in body), None)
    if fixed is None:
        return body, boundary
    dash = b"--" + boundary
    at, i = [], body.find(dash)
    while i >= 0:
        after = body[i + len(dash):i + len(dash) + 2]
        if not (i == 0 or body[i - 1:i] in (b"\r", b"\n")) or not (after[:2] == b"--" or after[:1] in b"\r\n \t"):
            return body, boundary
        at.append(i)
        i = body.find(dash, i + len(dash))
    if not at:
        return body, boundary
    pieces, start = [], 0
    for i in at:
        pieces += [body[start:i], b"--" + fixed]
        start = i + len(dash)
    pieces.append(body[start:])
    return b"".join(pieces), fixed


class LenientFormDataParser(FormDataParser):
    def _parse_multipart(self, stream: IO[bytes], mimetype: str, content_length: int | None,
                         options: dict[str, str]) -> Any:
        body = stream.read()  # in memory anyway (InMemoryRequest), bounded by MAX_CONTENT_LENGTH
        body, fixed = with_fixed_boundary(body, options.get("boundary", "").encode("latin-1"))
        options = {**options, "boundary": fixed.decode("latin-1")}
        try:
            return super()._parse_multipart(io.BytesIO(body), mimetype, len(body), options)
        except UnicodeDecodeError:
            boundary = options.get("boundary", "").encode("latin-1")
            fixed = utf8_part_headers(body, boundary)
            return super()._parse_multipart(io.BytesIO(fixed), mimetype, len(fixed), options)
