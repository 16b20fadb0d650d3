"""Any bytes in a multipart file name are accepted (issue 22, item 6): the name is only shown back,
never used as a path. Raw multipart bodies, as a client that is not a browser may send them,
through the real Waitress server."""

from __future__ import annotations

import pytest
import requests

from kws.serving.uploads import utf8_part_headers

BOUNDARY = b"kwsBoundary7MA4YWxkTrZu0gW"


def _body(filename: bytes, data: bytes, top_k: bytes | None = b"4") -> bytes:
    parts = []
    if top_k is not None:
        parts.append(b'Content-Disposition: form-data; name="top_k"\r\n\r\n' + top_k)
    parts.append(b'Content-Disposition: form-data; name="file"; filename="' + filename
                 + b'"\r\nContent-Type: audio/wav\r\n\r\n' + data)
    return b"".join(b"--" + BOUNDARY + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + BOUNDARY + b"--\r\n"


def _post(url: str, body: bytes) -> requests.Response:
    return requests.post(f"{url}/predict", data=body, timeout=60,
                         headers={"Content-Type": "multipart/form-data; boundary=" + BOUNDARY.decode()})


@pytest.mark.parametrize("name", [
    b"\xe9t\xe9.wav",  # Latin-1 "été.wav": the case
    "été.wav".encode(),  # UTF-8
    b"\xff\xfe\x00\x01.wav",  # no text encoding at all
    b"../../etc/passwd",  # a path: only ever a label
    b"",
])
def test_any_file_name_bytes_are_accepted(api, clips, name):
    wav = clips["two"][0].read_bytes()
    reference = requests.post(f"{api.url}/predict", params={"top_k": 4}, files={"file": ("a.wav", wav)},
                              timeout=60).json()
    resp = _post(api.url, _body(name, wav))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["keyword"] == reference["keyword"] and len(body["scores"]) == 4  # the form field was read too
    assert body["scores"] == reference["scores"]


def test_an_empty_upload_with_a_latin1_name_says_empty(api):
    resp = _post(api.url, _body(b"\xe9t\xe9.wav", b"", top_k=None))
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "empty_audio", resp.text
    assert "été.wav" in resp.json()["error"]["message"]


def test_only_non_utf8_header_blocks_are_rewritten():
    wav = b"RIFF\xe9\xff--" + BOUNDARY + b"x\r\n\r\nbody bytes \xe9 stay"  # content bytes are never touched
    body = _body(b"\xe9.wav", wav)
    fixed = utf8_part_headers(body, BOUNDARY)
    assert fixed.count("é.wav".encode()) == 1 and wav in fixed
    assert utf8_part_headers(_body("é.wav".encode(), wav), BOUNDARY) == _body("é.wav".encode(), wav)


# --------------------------------------------------------------------------- fixed boundaries
def _parse(parser_class, body: bytes, boundary: bytes):
    """``(form, {name: (filename, bytes)})`` as the parser reads the body."""
    import io

    _, form, files = parser_class().parse(io.BytesIO(body), "multipart/form-data", len(body),
                                          {"boundary": boundary.decode("latin-1")})
    return dict(form), {k: (f.filename, f.read()) for k, f in files.items()}


@pytest.mark.parametrize("boundary", [BOUNDARY, b"----WebKitFormBoundaryq8Zx3Lk2", b"a", b"x" * 70])
def test_a_body_renamed_to_a_fixed_boundary_parses_as_werkzeug_parses_it(boundary):
    from werkzeug.formparser import FormDataParser

    from kws.serving.uploads import FIXED_BOUNDARIES, LenientFormDataParser, with_fixed_boundary

    wav = b"RIFF\x00\x01-\n--\n" + bytes(range(256)) * 4
    body = _body("é.wav".encode(), wav).replace(BOUNDARY, boundary)
    renamed, fixed = with_fixed_boundary(body, boundary)
    assert fixed == FIXED_BOUNDARIES[0] and b"--" + boundary not in renamed and renamed.count(fixed) == 3
    expected = _parse(FormDataParser, body, boundary)
    assert expected[1]["file"][1] == wav and expected[0] == {"top_k": "4"}
    assert _parse(FormDataParser, renamed, fixed) == expected == _parse(LenientFormDataParser, body, boundary)
    # a body holding the first fixed boundary takes the next one; its bytes are untouched
    holding = _body(b"a.wav", wav + FIXED_BOUNDARIES[0]).replace(BOUNDARY, boundary)
    renamed, fixed = with_fixed_boundary(holding, boundary)
    assert fixed == FIXED_BOUNDARIES[1]
    assert _parse(FormDataParser, renamed, fixed)[1]["file"][1] == wav + FIXED_BOUNDARIES[0]


def test_a_body_that_is_not_conformant_is_left_to_werkzeug():
    from kws.serving.uploads import with_fixed_boundary

    mid_line = b"preamble--" + BOUNDARY + b"\r\n" + _body(b"a.wav", b"x")  # a delimiter not at a line start
    assert with_fixed_boundary(mid_line, BOUNDARY) == (mid_line, BOUNDARY)
    glued = _body(b"a.wav", b"x").replace(b"--" + BOUNDARY + b"--", b"--" + BOUNDARY + b"zz")  # no valid suffix
    assert with_fixed_boundary(glued, BOUNDARY) == (glued, BOUNDARY)
    assert with_fixed_boundary(b"no delimiter at all", BOUNDARY) == (b"no delimiter at all", BOUNDARY)
