"""Which audio container an upload is, from its first bytes (magic numbers), before any decoder runs.

Only bytes that start like a known audio container are ever handed to ffmpeg, and ffmpeg is
told which demuxer to use (``-f``): left to guess, ffmpeg probes every format it knows and can
spend seconds of CPU on a small hostile upload (gzip-compressed zeros, say) before giving up.
"""

from __future__ import annotations

#: Prefix -> ffmpeg demuxer (``ffmpeg -formats``), for containers recognised by their first bytes.
_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\x1aE\xdf\xa3", "matroska"),  # Matroska / WebM (EBML header): browsers' MediaRecorder
    (b"OggS", "ogg"),  # Ogg (Vorbis, Opus, Speex, FLAC)
    (b"fLaC", "flac"),
    (b"#!AMR", "amr"),  # AMR-NB ("#!AMR\n") and AMR-WB ("#!AMR-WB\n"): phone voice memos
    (b"caff", "caf"),  # Apple Core Audio Format
    (b".snd", "au"),  # Sun/NeXT audio
    (b"RF64", "wav"),  # 64-bit RIFF WAV (EBU Tech 3306)
    (b"riff\x2e\x91\xcf\x11", "w64"),  # Sony Wave64 (its RIFF GUID)
    (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "asf"),  # ASF / WMA (its header GUID)
)
#: Box types an ISO base media file (MP4, M4A, 3GP, MOV) starts with, at offset 4.
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
_ID3_HEADER = 10


def _id3_size(data: bytes) -> int | None:
    """Length of a leading ID3v2 tag (header, body and optional footer), or None if there is none."""
    if len(data) < _ID3_HEADER or not data.startswith(b"ID3") or any(b & 0x80 for b in data[6:10]):
        return None
    body = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]  # "synchsafe": 7 bits per byte
    footer = _ID3_HEADER if data[5] & 0x10 else 0
    return _ID3_HEADER + body + footer


def _frame_sync(head: bytes) -> str | None:
    """MPEG audio (MP1/2/3) or AAC ADTS, which start with an 11/12-bit frame sync instead of a magic."""
    if len(head) < 2 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    if head[1] & 0xF6 == 0xF0:  # 12-bit sync, layer 00: ADTS
        return "aac"
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    return "mp3" if version != 1 and layer != 0 else None  # 01 is a reserved version, 00 a reserved layer


def container(data: bytes) -> str | None:
    """The ffmpeg demuxer for ``data`` (``"matroska"``, ``"mov"``, ``"mp3"``, ...), or None when the bytes
    do not start like any audio container we accept."""
    tag = _id3_size(data)
    if tag is not None:  # MP3, and sometimes AAC or FLAC, behind an ID3v2 tag
        inner = data[tag:tag + 4]
        if inner == b"fLaC":
            return "flac"
        return "aac" if _frame_sync(inner) == "aac" else "mp3"
    for prefix, fmt in _PREFIXES:
        if data.startswith(prefix):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"FORM" and data[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if data[4:8] in _MP4_BOXES:
        return "mov"
    return _frame_sync(data[:2])
