"""End-aligned copies: the word moved to the window's end, as a live stream first sees it whole."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from kws.audio import speech_end_s
from kws.dataset import AugmentConfig, Example, augmented_copies, render
from kws.errors import ConfigError

SR = 16000


@pytest.fixture()
def early_word(tmp_path):
    """A one-second clip whose 'word' (a 300 ms tone) ends at 0.4 s, as many recordings do."""
    t = np.arange(int(0.3 * SR)) / SR
    clip = np.zeros(SR, np.float32)
    clip[int(0.1 * SR):int(0.4 * SR)] = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "word.wav", clip, SR, subtype="PCM_16")
    return tmp_path


def test_render_moves_the_speech_end_to_the_requested_gap_before_the_window_end(early_word):
    as_recorded = render(Example("word.wav", 2), [early_word], [], SR, SR)
    for gap_ms in (0, 120, 250):
        ex = Example("word.wav", 2, shift=-800, end_gap=int(gap_ms / 1000 * SR))
        wave = render(ex, [early_word], [], SR, SR)
        assert len(wave) == SR
        assert 1.0 - speech_end_s(wave, SR) == pytest.approx(gap_ms / 1000, abs=0.011)
        assert np.sum(wave**2) == pytest.approx(np.sum(as_recorded**2), rel=1e-3)


def test_without_end_gap_the_random_shift_applies(early_word):
    wave = render(Example("word.wav", 2, shift=1600), [early_word], [], SR, SR)
    assert speech_end_s(wave, SR) == pytest.approx(0.5, abs=0.011)


def _copies(augment, n=40):
    examples = [Example(f"w{i}.wav", 2) for i in range(n)]
    return augmented_copies(examples, augment, np.random.default_rng(7), SR, None, [2])


def test_share_of_end_aligned_copies_and_their_gaps():
    out = _copies(AugmentConfig(copies=2, end_aligned=0.5, end_gap_ms=(50.0, 200.0)), n=400)
    gaps = np.array([ex.end_gap for ex in out])
    aligned = gaps[gaps >= 0]
    assert 0.4 < len(aligned) / len(out) < 0.6
    assert aligned.min() >= int(0.05 * SR) and aligned.max() <= int(0.2 * SR)


def test_off_by_default_and_the_other_draws_unchanged():
    off = _copies(AugmentConfig(copies=2, speed=(0.9, 1.1)))
    assert all(ex.end_gap == -1 for ex in off)
    on = _copies(AugmentConfig(copies=2, speed=(0.9, 1.1), end_aligned=1.0))
    assert all(ex.end_gap >= 0 for ex in on)
    # only the end-aligned draw is added: the first copy's shift and speed are those of the default
    assert (off[0].shift, off[0].speed) == (on[0].shift, on[0].speed)


@pytest.mark.parametrize("kwargs", [{"end_aligned": 1.5}, {"end_aligned": -0.1},
                                    {"end_gap_ms": (300.0, 100.0)}, {"end_gap_ms": (0.0, 1000.0)}])
def test_bad_settings_are_a_config_error(kwargs):
    with pytest.raises(ConfigError, match="prepare.augment"):
        AugmentConfig(**kwargs)


def test_test_split_digest_is_unchanged_by_the_new_field():
    """Registered champions carry digests of test splits computed before ``end_gap`` existed."""
    import hashlib
    import json
    from dataclasses import asdict

    from kws.dataset import digest

    examples = [Example("b/x.wav", 3, noise=1, snr_db=7.5), Example("a/y.wav", 1)]
    rows = sorted(json.dumps({k: v for k, v in asdict(ex).items() if k != "end_gap"}, sort_keys=True)
                  for ex in examples)
    assert digest(examples) == hashlib.sha256("".join(r + "\n" for r in rows).encode()).hexdigest()
    # the value kws.dataset.digest gave these examples before end_gap existed (625f22f)
    assert digest(examples) == "d3025e78e958e04bf2e06ebe677a4999225b782f3a78247796bc414295b18528"
    assert digest([Example("a/y.wav", 1, end_gap=0)]) != digest([Example("a/y.wav", 1)])
