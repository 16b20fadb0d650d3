"""Generated streams (seeded, known word times, one split's clips only) and the matching rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kws.audio import load_file, speech_end_s
from kws.errors import ConfigError, DatasetError
from kws.streaming.generate import Clip, StreamRecipe, Truth, generate_stream, generate_streams, split_clips
from kws.streaming.matching import Found, det_curve, match, pick_threshold

LABELS = ["_silence_", "_unknown_", "one", "two"]


@pytest.fixture(scope="module")
def splits(sample_dir, tmp_path_factory):
    """Two examples lists like prepare writes them: the digits' first clips vs their other clips."""
    out = tmp_path_factory.mktemp("splits")
    noise = sorted(str(p) for p in (sample_dir / "_background_noise_").glob("*.wav"))
    files = {}
    for split, pick in (("test", slice(0, 2)), ("validation", slice(2, 3))):
        examples = [{"source": "", "label": 0}]  # a silence example: never a word in a stream
        for word, label in (("one", 2), ("two", 3), ("three", 1), ("four", 1)):
            for path in sorted((sample_dir / word).glob("*.wav"))[pick]:
                examples.append({"source": f"{word}/{path.name}", "label": label, "origin": 0})
        files[split] = out / f"{split}_examples.json"
        files[split].write_text(json.dumps({"root": str(sample_dir), "labels": LABELS, "noise_files": noise,
                                            "examples": examples}))
    return files


def test_split_clips_reads_the_examples_list(splits, sample_dir):
    clips, noise = split_clips(splits["test"])
    assert len(clips) == 8 and {c.label for c in clips} == {"one", "two", "_unknown_"}
    assert {c.word for c in clips if c.label == "_unknown_"} == {"three", "four"}
    assert len(noise) == 6 and all(p.is_file() for p in noise)
    with pytest.raises(DatasetError, match="prepare"):
        split_clips(sample_dir / "missing.json")


def test_a_stream_is_seeded_and_words_are_where_the_truth_says(splits):
    clips, noise = split_clips(splits["test"])
    recipe = StreamRecipe(seed=3, duration_s=30.0, gap_s=(0.5, 1.5), snr_db=(10.0, 20.0), keyword_share=0.7)
    a = generate_stream(clips, noise, recipe)
    b = generate_stream(clips, noise, recipe)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert a.truth == b.truth and a.noise == b.noise and a.noise
    other = generate_stream(clips, noise, StreamRecipe(**{**recipe.to_dict(), "seed": 4}))
    assert other.truth != a.truth
    assert len(a.samples) == 30 * 16000 and 10 <= len(a.truth) <= 20
    starts = [t.start_s for t in a.truth]
    gaps = np.diff(starts) - 1.0
    assert np.all(gaps >= 0.5 - 1e-3) and np.all(gaps <= 1.5 + 1e-3)
    for t in a.truth:
        assert t.start_s <= t.time_s <= t.start_s + 1.0 and t.start_s + 1.0 <= 30.0
        assert t.start_s < t.end_s <= t.start_s + 1.0
    # the words are really there: without background, the stream IS the clips at their start times
    quiet = generate_stream(clips, [], StreamRecipe(**{**recipe.to_dict(), "noise_rms": 0.0}))
    for t, src in zip(quiet.truth, quiet.sources):
        clip = load_file(src, 16000)[:16000]
        i = int(round(t.start_s * 16000))
        np.testing.assert_allclose(quiet.samples[i:i + len(clip)], clip, atol=1e-6)
        assert t.end_s == pytest.approx(t.start_s + speech_end_s(clip, 16000), abs=1e-4)
        assert Clip(Path(src), t.label).word == t.word
    spoken = np.zeros(len(quiet.samples), bool)
    for t in quiet.truth:
        spoken[int(t.start_s * 16000):int(t.start_s * 16000) + 16000] = True
    assert not quiet.samples[~spoken].any()  # nothing between the words


def test_streams_use_only_the_given_splits_clips_and_every_background(splits):
    test, noise = split_clips(splits["test"])
    validation, _ = split_clips(splits["validation"])
    streams = generate_streams(test, noise, StreamRecipe(seed=0, duration_s=20.0, gap_s=(0.2, 0.5)), count=6)
    used = {s for st in streams for s in st.sources}
    assert used <= {str(c.path) for c in test} and not used & {str(c.path) for c in validation}
    assert len({st.noise for st in streams}) == 6
    share = np.mean([t.label != "_unknown_" for st in streams for t in st.truth])
    assert 0.5 < share < 0.9  # keyword_share 0.7
    words = [t.word for st in streams for t in st.truth]
    assert {"one", "two", "three", "four"} <= set(words)


def test_bad_recipes_are_config_errors():
    for bad in ({"gap_s": (2.0, 1.0)}, {"snr_db": (5.0,)}, {"keyword_share": 1.5}, {"duration_s": 0.5}):
        with pytest.raises(ConfigError, match="stream recipe"):
            StreamRecipe(**bad)


def test_speech_ends_where_the_loud_part_ends_not_where_the_clip_does():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    clip = 1e-3 * rng.standard_normal(16000)  # a noise floor all along
    word = (t >= 0.2) & (t < 0.55)
    clip[word] += 0.5 * np.sin(2 * np.pi * 440 * t[word])
    assert speech_end_s(clip, 16000) == pytest.approx(0.55, abs=0.011)
    clip[(t >= 0.7) & (t < 0.72)] += 0.003  # a click near the floor is not speech
    assert speech_end_s(clip, 16000) == pytest.approx(0.55, abs=0.011)
    clip[(t >= 0.8) & (t < 0.9)] += 0.2 * np.sin(2 * np.pi * 300 * t[(t >= 0.8) & (t < 0.9)])  # a second syllable is
    assert speech_end_s(clip, 16000) == pytest.approx(0.9, abs=0.011)


TRUTH = [Truth("one", 2.0, 1.5), Truth("_unknown_", 5.0, 4.5), Truth("two", 8.0, 7.5), Truth("one", 11.0, 10.5)]


def test_a_hit_a_wrong_word_a_miss():
    out = match(TRUTH, [Found("one", 2.5), Found("one", 8.2)], duration_s=3600)
    assert (out.hits, out.wrong, out.misses, out.false_accepts) == (1, 1, 1, 0)
    assert out.confusions == {("two", "one"): 1}
    s = out.summary()
    assert s["recall"] == pytest.approx(1 / 3) and s["recall_per_keyword"] == {"one": 0.5, "two": 0.0}


def test_false_accepts_in_noise_on_other_words_and_outside_the_tolerance():
    found = [Found("two", 5.1), Found("one", 13.5), Found("one", 2.0 + 0.76)]
    out = match(TRUTH, found, duration_s=1800)
    assert out.false_accepts == 3 and out.hits == 0 and out.duplicates == 0
    assert out.fa_per_hour == pytest.approx(6.0)
    assert match(TRUTH, [Found("one", 2.0 + 0.74)], 10).hits == 1  # inside 750 ms


def test_two_detections_of_one_word_the_second_is_a_false_accept():
    out = match(TRUTH, [Found("one", 1.8), Found("one", 2.4)], duration_s=3600)
    assert (out.hits, out.false_accepts, out.duplicates) == (1, 1, 1)
    # and a wrong word first still takes the word: the right one after it is a duplicate
    out = match(TRUTH, [Found("two", 1.9), Found("one", 2.1)], duration_s=3600)
    assert (out.hits, out.wrong, out.false_accepts) == (0, 1, 1)


def test_a_hit_known_too_long_after_its_speech_is_late():
    truth = [Truth("one", 2.0, 1.5, end_s=2.3), Truth("two", 8.0, 7.5, end_s=8.4)]
    found = [Found("one", 2.0, fired_s=2.5), Found("two", 8.1, fired_s=9.0)]
    out = match(truth, found, 3600, max_latency_s=0.35)
    assert (out.hits, out.late) == (2, 1) and out.latencies == pytest.approx([0.2, 0.6])
    assert out.recall == 1.0 and out.recall_on_time == 0.5
    s = out.summary()
    assert s["latency_s"]["n"] == 2 and s["latency_s"]["max"] == pytest.approx(0.6) and s["late"] == 1
    assert match(truth, found, 3600).late == 0  # no bound: nothing is late, the latencies are still measured
    assert match(truth, [Found("one", 2.0)], 3600).latencies == []  # a detection without its time: not timed


def test_outcomes_add_up_over_streams():
    a = match(TRUTH, [Found("one", 2.0)], 1800)
    a += match(TRUTH, [Found("one", 11.0), Found("two", 20.0)], 1800)
    assert (a.hits, a.false_accepts, a.keywords_said, a.seconds) == (2, 1, 6, 3600)
    assert a.fa_per_hour == 1.0


def test_det_curve_and_the_operating_point():
    # a fake detector: every word detected with confidence 0.8 (keywords) / 0.5 (the other word)
    def detect(threshold, i):
        conf = {"one": 0.8, "two": 0.8, "_unknown_": 0.5}
        return [Found(t.label if t.label != "_unknown_" else "one", t.time_s, conf[t.label])
                for t in TRUTH if conf[t.label] >= threshold]

    curve = det_curve([0.3, 0.6, 0.9], detect, [TRUTH], [1800])
    assert [r["recall"] for r in curve] == [1.0, 1.0, 0.0]
    assert [r["false_accepts_per_hour"] for r in curve] == [2.0, 0.0, 0.0]
    assert [r["hits"] for r in curve] == [3, 3, 0] and [r["false_accepts"] for r in curve] == [1, 0, 0]  # 3 keywords said
    assert pick_threshold(curve, target_fa_per_hour=1.0)["threshold"] == 0.6
    assert pick_threshold(curve, target_fa_per_hour=5.0)["threshold"] == 0.6  # same recall, fewer FAs
    assert pick_threshold([{"threshold": 0.5, "recall": 1.0, "false_accepts_per_hour": 9.0}], 1.0) is None
    # ranked by recall on time, a threshold whose hits come late loses to one whose hits do not
    rows = [{"threshold": 0.5, "recall": 0.9, "recall_on_time": 0.6, "false_accepts_per_hour": 2.0},
            {"threshold": 0.7, "recall": 0.8, "recall_on_time": 0.8, "false_accepts_per_hour": 1.0}]
    assert pick_threshold(rows, 5.0)["threshold"] == 0.5
    assert pick_threshold(rows, 5.0, "recall_on_time")["threshold"] == 0.7


# --------------------------------------------------------------------------- the stage, end to end
@pytest.fixture(scope="module")
def stage_run(sample_dir, repo, tmp_path_factory):
    """The stream stage on a tiny real model (trained for seconds on the sample's digits), with
    validation and test lists of different clips, and MLflow's embedded store in a scratch folder."""
    import os

    import mlflow

    from kws import tracking
    from kws.config import compose
    from tests.support.bundles import TINY_LABELS, build_tiny_bundle
    from kws.stages.stream import run_stream

    root = tmp_path_factory.mktemp("stage")
    labels = list(TINY_LABELS)
    model = build_tiny_bundle(root / "model", sample_dir=sample_dir)
    noise = sorted(str(p) for p in (sample_dir / "_background_noise_").glob("*.wav"))
    features = root / "features"
    features.mkdir()
    for split, pick in (("test", slice(0, 2)), ("validation", slice(2, 3))):
        examples = [{"source": f"{w}/{p.name}", "label": labels.index(w) if w in labels else 1, "origin": 0}
                    for w in ("one", "two", "three", "four", "five") for p in sorted((sample_dir / w).glob("*.wav"))[pick]]
        (features / f"{split}_examples.json").write_text(json.dumps(
            {"root": str(sample_dir), "labels": labels, "noise_files": noise, "examples": examples, "digest": split}))
    cwd = os.getcwd()
    os.chdir(root)  # MLflow's embedded store (mlflow.db, mlruns/) lands here
    env = pytest.MonkeyPatch()
    env.delenv("MLFLOW_TRACKING_URI", raising=False)  # the embedded store, whatever an earlier test left set
    try:
        tracking.setup("kws")
        with mlflow.start_run() as run:
            (model / "run.json").write_text(json.dumps({"run_id": run.info.run_id}))
        cfg = compose(["stream.streams=2", "stream.validation_streams=1", "stream.duration_s=30",
                       "stream.thresholds.step=0.1",
                       "stream.smoothing.average_window_s=[0.0,0.5]", "stream.smoothing.suppression_s=[1.0]"],
                      conf_dir=repo / "conf")
        metrics = run_stream(cfg, features, model, root / "reports")
    finally:
        os.chdir(cwd)
        env.undo()
    return root, model, metrics, run.info.run_id


def test_the_stage_chooses_on_validation_and_reports_on_test(stage_run):
    import csv

    root, _, metrics, _ = stage_run
    reports = root / "reports"
    point = json.loads((reports / "operating_point.json").read_text())
    assert point["operating_point"]["chosen_on"] == "validation"
    thr = point["settings"]["threshold"]
    rows = list(csv.DictReader(open(reports / "det.csv")))
    assert {r["split"] for r in rows} == {"validation", "test"} and len(rows) == 2 * 8  # 0.3..1.0 by 0.1
    at = {r["split"]: r for r in rows if float(r["threshold"]) == thr}
    # the test figures are the test curve's at the threshold chosen on validation
    assert float(at["test"]["recall"]) == metrics["test"]["recall"]
    assert float(at["test"]["false_accepts_per_hour"]) == metrics["test"]["false_accepts_per_hour"]
    target = point["operating_point"]["target_fa_per_hour"]
    val = [r for r in rows if r["split"] == "validation"]
    # with a latency bound (the default), recall counts only hits known in time after their speech's end
    assert point["operating_point"]["max_latency_s"] == 0.35
    key = "recall_on_time"
    if point["operating_point"]["target_met_on_validation"]:
        assert float(at["validation"]["false_accepts_per_hour"]) <= target
        ok = [float(r[key]) for r in val if float(r["false_accepts_per_hour"]) <= target]
        assert float(at["validation"][key]) == max(ok)  # the best recall at the target, on validation
    assert metrics["test"]["latency_s"]["n"] == metrics["test"]["hits"]
    assert metrics["test"]["late"] == int(round((metrics["test"]["recall"] - metrics["test"]["recall_on_time"])
                                                * metrics["test"]["keywords_said"]))
    s = metrics["streams"]
    assert s["validation"]["digest"] == "validation" and s["test"]["digest"] == "test"
    assert not set(s["validation"]["seeds"]) & set(s["test"]["seeds"])
    # each split its own number of streams (stream.validation_streams, stream.streams)
    assert (s["validation"]["streams"], s["test"]["streams"]) == (1, 2) and s["validation"]["minutes"] == 0.5
    assert s["test"]["minutes"] == 1.0 and metrics["recipe"]["duration_s"] == 30.0
    assert set(metrics["test"]["recall_per_keyword"]) == {"one", "two", "three"}
    assert (reports / "det.png").stat().st_size > 5000


def test_the_stage_measures_with_the_runtime_the_service_serves(stage_run):
    """The operating point is chosen on the scores of the runtime ``KWS_RUNTIME=auto`` loads for
    this bundle, and the test figures are filed under that runtime (float32 beside it for int8)."""
    from kws.bundle import read_meta
    from kws.serving.runtimes import load_runtime

    _, model, metrics, _ = stage_run
    served = load_runtime(read_meta(model), "auto").name
    assert metrics["runtime"] == served
    assert metrics["test_by_runtime"][served]["recall"] == metrics["test"]["recall"]
    assert set(metrics["test_by_runtime"]) == {served} | {"tflite"}


def test_the_operating_point_goes_to_mlflow_and_into_the_bundle_the_service_uses(stage_run, tmp_path):
    import shutil

    from mlflow import MlflowClient

    from kws.serving.predictor import Predictor
    from kws.streaming.benchmark import promotion_record

    root, model, metrics, run_id = stage_run
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    logged = client.get_run(run_id).data.metrics
    assert logged["stream_recall"] == pytest.approx(metrics["test"]["recall"])
    assert logged["stream_threshold"] == pytest.approx(metrics["operating_point"]["threshold"])
    assert {"plots/det.png"} <= {a.path for a in client.list_artifacts(run_id, "plots")}
    detector, tags = promotion_record(root / "reports")
    assert tags["stream_recall"] == f"{metrics['test']['recall']:.6f}" and len(tags["stream_key"]) == 16
    bundle = tmp_path / "bundle"
    shutil.copytree(model, bundle)
    (bundle / "detector.json").write_text(json.dumps(detector))
    pred = Predictor(bundle, warmup=False)
    assert pred.detector.to_dict() == detector["settings"]
    assert pred.describe()["detector"]["source"] == "bundle"
    assert promotion_record(tmp_path / "nothing") == (None, {})
