"""kws-listen's audio sources: chunks that queued up go together in one request, within the
session's limit, the samples unchanged and in order."""

from __future__ import annotations

import time

import numpy as np
import soundfile as sf

from kws.listen import ChunkJoiner, file_chunks

N = 800  # 50 ms at 16 kHz


def test_the_joiner_sends_what_arrived_in_whole_chunks_within_the_limit():
    rng = np.random.default_rng(0)
    audio = rng.uniform(-1, 1, int(3.5 * N)).astype(np.float32)
    joiner = ChunkJoiner(N, most=2 * N + 5)  # a limit that is no whole number of chunks
    joiner.add(audio[:N // 2])
    assert list(joiner.take()) == []  # less than one chunk: nothing to send yet
    joiner.add(audio[N // 2:])
    out = list(joiner.take())
    assert [len(x) for x in out] == [2 * N, N]
    np.testing.assert_array_equal(np.concatenate(out), audio[:3 * N])
    assert len(joiner.pending) == N // 2  # the rest waits for more audio


def test_a_file_in_real_time_catches_up_after_a_slow_answer(tmp_path):
    audio = (0.3 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    path = tmp_path / "tone.wav"
    sf.write(path, audio, 16000, subtype="FLOAT")
    sizes, got = [], []
    for i, chunk in enumerate(file_chunks(path, 50, realtime=True, most=4 * N)):
        sizes.append(len(chunk))
        got.append(chunk)
        if i == 0:
            time.sleep(0.4)  # a slow answer: 8 chunks are said meanwhile
    np.testing.assert_array_equal(np.concatenate(got), audio)
    assert sizes[0] == N and sizes[1] == 4 * N  # as many as were said, up to the limit
    assert all(s % N == 0 for s in sizes)


def test_a_file_sent_fast_goes_one_chunk_per_request(tmp_path):
    audio = np.zeros(int(2.5 * N), np.float32)
    path = tmp_path / "quiet.wav"
    sf.write(path, audio, 16000, subtype="FLOAT")
    assert [len(c) for c in file_chunks(path, 50, realtime=False, most=100 * N)] == [N, N, N // 2]
