"""The streaming detector: smoothing, minimum count, suppression, re-arming, ignored labels."""

from __future__ import annotations

import numpy as np
import pytest

from kws.errors import ConfigError, KWSError
from kws.streaming.detector import DetectorSettings, SmoothedStream, StreamDetector

LABELS = ["_silence_", "_unknown_", "yes", "no"]
STRIDE = 0.25


def rows(*specs: tuple[str, float, int]) -> tuple[np.ndarray, np.ndarray]:
    """Window scores: for each (label, score, n) ``n`` windows whose ``label`` scores ``score``,
    the rest spread over silence; times every STRIDE seconds from 0."""
    out = []
    for label, score, n in specs:
        row = np.full(len(LABELS), 0.0)
        row[LABELS.index(label)] = score
        row[0] += 1.0 - score if label != "_silence_" else 0.0
        out.extend([row] * n)
    scores = np.array(out)
    return np.arange(len(scores)) * STRIDE, scores


def detect(settings: DetectorSettings, times, scores):
    return StreamDetector(LABELS, settings).push_many(times, scores)


def test_smoothing_ignores_a_single_confident_window_but_finds_a_sustained_word():
    s = DetectorSettings(threshold=0.6, average_window_s=0.75, suppression_s=1.0, min_count=3)
    t, x = rows(("_silence_", 1.0, 4), ("yes", 0.95, 1), ("_silence_", 1.0, 6))
    assert detect(s, t, x) == []  # a spike averaged with its neighbours stays below 0.6
    t, x = rows(("_silence_", 1.0, 4), ("yes", 0.9, 4), ("_silence_", 1.0, 6))
    found = detect(s, t, x)
    assert [d.label for d in found] == ["yes"]
    d = found[0]
    assert 1.0 <= d.time_s <= 1.75 and d.fired_s >= d.time_s and 0.6 <= d.confidence <= 0.9


def test_min_count_needs_enough_windows_in_the_average():
    t, x = rows(("yes", 0.9, 2), ("_silence_", 1.0, 4))
    assert detect(DetectorSettings(threshold=0.7, min_count=3, average_window_s=0.75), t, x) == []
    assert [d.label for d in detect(DetectorSettings(threshold=0.7, min_count=1, average_window_s=0.75), t, x)] == ["yes"]
    # the count is of windows inside average_window_s: a window long gone does not count
    t2 = np.array([0.0, 5.0, 5.25])
    x2 = np.array([x[0]] * 3)
    assert detect(DetectorSettings(min_count=3, average_window_s=0.5), t2, x2) == []


def test_suppression_blocks_a_second_word_too_soon_and_lets_it_through_later():
    t, x = rows(("yes", 0.9, 4), ("no", 0.85, 4), ("_silence_", 1.0, 4))
    soon = detect(DetectorSettings(min_count=1, average_window_s=0.0, suppression_s=2.0), t, x)
    assert [d.label for d in soon] == ["yes"]  # "no" starts 1 s after "yes" fired
    later = detect(DetectorSettings(min_count=1, average_window_s=0.0, suppression_s=0.5), t, x)
    assert [d.label for d in later] == ["yes", "no"]
    assert later[1].fired_s - later[0].fired_s >= 0.5


def test_a_more_confident_other_keyword_follows_a_detection_at_once():
    # a word's start read as another keyword ("on" for the start of "off"): the real word must
    # not wait for suppression_s to end, or a live listener sees it a second late
    s = DetectorSettings(threshold=0.6, average_window_s=0.0, suppression_s=2.0, min_count=1)
    t, x = rows(("_silence_", 1.0, 4), ("yes", 0.7, 2), ("no", 0.9, 4), ("_silence_", 1.0, 8))
    found = detect(s, t, x)
    assert [d.label for d in found] == ["yes", "no"]
    assert found[1].fired_s - found[0].fired_s == pytest.approx(2 * STRIDE)  # at once, not after 2 s
    assert found[1].confidence > found[0].confidence
    # the same keyword never repeats within suppression, however confident (one word, one detection)
    t, x = rows(("yes", 0.7, 2), ("_silence_", 1.0, 1), ("yes", 0.95, 2), ("_silence_", 1.0, 8))
    assert [d.label for d in detect(s, t, x)] == ["yes"]
    # two keywords as sure as each other do not alternate: each must beat the one before
    t, x = rows(("yes", 0.8, 1), ("no", 0.8, 1), ("yes", 0.8, 1), ("no", 0.8, 1), ("_silence_", 1.0, 8))
    assert [d.label for d in detect(s, t, x)] == ["yes"]


def test_one_long_word_is_one_detection_a_repeated_word_is_two():
    s = DetectorSettings(threshold=0.6, average_window_s=0.5, suppression_s=0.5, min_count=2)
    t, x = rows(("yes", 0.9, 12), ("_silence_", 1.0, 6))  # 3 s above threshold: longer than suppression
    assert [d.label for d in detect(s, t, x)] == ["yes"]
    t, x = rows(("yes", 0.9, 4), ("_silence_", 1.0, 4), ("yes", 0.9, 4), ("_silence_", 1.0, 4))
    found = detect(s, t, x)
    assert [d.label for d in found] == ["yes", "yes"]
    assert found[1].time_s - found[0].time_s == pytest.approx(2.0, abs=0.5)


def test_silence_and_unknown_are_never_detected():
    t, x = rows(("_unknown_", 0.99, 8), ("_silence_", 1.0, 8), ("_unknown_", 0.99, 8))
    assert detect(DetectorSettings(threshold=0.1, min_count=1), t, x) == []


def test_reset_starts_a_new_stream_and_push_one_by_one_equals_the_batch():
    t, x = rows(("_silence_", 1.0, 2), ("yes", 0.9, 4), ("_silence_", 1.0, 4))
    det = StreamDetector(LABELS, DetectorSettings())
    one = [d for ti, xi in zip(t, x) for d in det.push(ti, xi)]
    assert one == detect(DetectorSettings(), t, x) and len(one) == 1
    assert len(det.push_many(t + 10, x)) == 1  # the word fell below the threshold in between: re-armed
    det.reset()
    assert len(det.push_many(t, x)) == 1  # after reset the times may start again


def _wordy_stream(rng: np.random.Generator, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Noisy softmax rows with words: runs of windows where a keyword (or another word) rises,
    sometimes two keywords in a row, at a slightly jittered stride."""
    logits = rng.normal(0.0, 1.0, (n, len(LABELS)))
    logits[:, 0] += 1.5
    i = 0
    while i < n:
        i += int(rng.integers(2, 12))
        k, run = int(rng.integers(1, len(LABELS))), int(rng.integers(1, 8))
        logits[i:i + run, k] += rng.uniform(1.0, 6.0)
    scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return np.cumsum(rng.uniform(0.1, 0.15, n)), scores


@pytest.mark.parametrize("average_window_s, suppression_s, min_count", [
    (0.0, 0.75, 1), (0.25, 0.75, 1), (0.5, 1.25, 2), (0.375, 0.0, 3), (0.25, 3.0, 1),
])
def test_the_sweeps_smoothed_stream_detects_what_the_detector_detects(average_window_s, suppression_s, min_count):
    """SmoothedStream (the threshold sweep's shortcut) gives the detector's very detections at
    every threshold: the same labels, peak times, confidences and firing times."""
    rng = np.random.default_rng(int(average_window_s * 1000 + suppression_s * 10 + min_count))
    settings = DetectorSettings(average_window_s=average_window_s, suppression_s=suppression_s, min_count=min_count)
    found = 0
    for _ in range(3):
        t, x = _wordy_stream(rng)
        smoothed = SmoothedStream(LABELS, settings, t, x)
        for thr in np.arange(0.3, 1.0, 0.05):
            expected = detect(settings.replace(threshold=float(thr)), t, x)
            got = smoothed.detections(float(thr))
            assert [(d.label, d.time_s, d.fired_s) for d in got] == [(d.label, d.time_s, d.fired_s) for d in expected]
            np.testing.assert_allclose([d.confidence for d in got], [d.confidence for d in expected], atol=1e-12)
            found += len(expected)
    assert found > 50  # the streams did make the detector decide, often


def test_the_smoothed_stream_refuses_what_the_detector_refuses():
    with pytest.raises(KWSError, match="labels"):
        SmoothedStream(LABELS, DetectorSettings(), [0.0], np.ones((1, 3)))
    with pytest.raises(KWSError, match="finite"):
        SmoothedStream(LABELS, DetectorSettings(), [0.0], np.full((1, 4), np.nan))
    with pytest.raises(KWSError, match="time order"):
        SmoothedStream(LABELS, DetectorSettings(), [1.0, 0.5], np.ones((2, 4)) / 4)


def test_memory_is_bounded():
    det = StreamDetector(LABELS, DetectorSettings(average_window_s=1e6), max_windows=16)
    t, x = rows(("_silence_", 1.0, 100))
    det.push_many(t, x)
    assert len(det._scores) == 16


def test_bad_settings_and_bad_input_are_precise_errors():
    for bad in ({"threshold": 1.5}, {"min_count": 0}, {"suppression_s": -1}, {"average_window_s": float("nan")},
                {"min_count": 2.5}):
        with pytest.raises(ConfigError, match="detector settings"):
            DetectorSettings(**bad)
    with pytest.raises(ConfigError, match="unknown key"):
        DetectorSettings.from_dict({"threshold": 0.5, "thresold": 0.4})
    assert DetectorSettings.from_dict(DetectorSettings(threshold=0.7).to_dict()).threshold == 0.7
    det = StreamDetector(LABELS)
    with pytest.raises(KWSError, match="3 values"):
        det.push(0.0, [0.1, 0.2, 0.7])
    det.push(1.0, [1, 0, 0, 0])
    with pytest.raises(KWSError, match="time order"):
        det.push(0.5, [1, 0, 0, 0])
    with pytest.raises(KWSError, match="finite"):
        det.push(2.0, [np.nan, 0, 0, 0])
