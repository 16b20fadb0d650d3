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
