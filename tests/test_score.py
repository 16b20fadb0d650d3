"""kws-score on REAL clips with a tiny REAL model: both folder layouts, the CLI, bad clips, the arithmetic.

The clips are read in place from ../shared/data (the test folders are built from symlinks in
tmp_path); the bundle is trained once per module on the real digit sample (labels
``_silence_ _unknown_ one two three``), so the digit folders of speech_commands_real are its
keywords and every other word is ``_unknown_``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from kws.errors import ConfigError, DatasetError, EmptyAudioError
from kws.labels import SILENCE, UNKNOWN
from kws.scoring.classifier import bundle_classifier, score
from kws.scoring.folders import collect
from kws.scoring.report import format_report
from kws.scoring.summary import wilson
from tests.support.paths import DATA

REAL = DATA / "speech_commands_real"
REAL_SILENCE = DATA / "speech_commands_real_silence"
SAMPLE = DATA / "speech_commands_sample"
KEYWORDS = ("one", "two", "three")          # the tiny model's keywords: whole folders, symlinked
OTHERS = {"dog": 3, "cat": 4, "yes": 4}     # other words -> _unknown_ (a few clips each)
N_SILENCE = 8

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytestmark = pytest.mark.skipif(not (REAL.is_dir() and REAL_SILENCE.is_dir() and SAMPLE.is_dir()),
                                reason=f"real Speech Commands clips not found under {DATA}")


def _some(folder: Path, k: int) -> list[Path]:
    return sorted(folder.glob("*.wav"))[:k]


def _consistent(result: dict) -> None:
    """The invariants every result must satisfy."""
    n = result["n"]
    assert result["accuracy"] == pytest.approx(result["correct"] / n)
    lo, hi = result["ci95"]
    assert 0.0 <= lo <= result["accuracy"] <= hi <= 1.0
    assert sum(c["n"] for c in result["per_class"].values()) == n
    assert sum(c["correct"] for c in result["per_class"].values()) == result["correct"]
    for c in result["per_class"].values():
        assert c["recall"] == pytest.approx(c["correct"] / c["n"])
        assert c["ci95"][0] <= c["recall"] <= c["ci95"][1]
    assert result["correct"] + sum(c["count"] for c in result["confusions"]) + len(result["errors"]) == n
    counts = [c["count"] for c in result["confusions"]]
    assert counts == sorted(counts, reverse=True)
    assert all(c["true"] != c["predicted"] for c in result["confusions"])


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "kws-score"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "kws.score"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from tests.support.bundles import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("score-bundle") / "model", sample_dir=SAMPLE, int8=True)


@pytest.fixture(scope="module")
def classify(bundle):
    return bundle_classifier(bundle)


@pytest.fixture(scope="module")
def labels(classify) -> list[str]:
    assert classify.labels == [SILENCE, UNKNOWN, *KEYWORDS]
    return classify.labels


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """The same real clips in the archive layout (+ a silence folder) and in the canonical layout."""
    root = tmp_path_factory.mktemp("score-data")
    archive, canonical, silence = root / "archive", root / "canonical", root / "silence"
    for d in (archive, canonical / UNKNOWN, canonical / SILENCE, silence, archive / "_background_noise_"):
        d.mkdir(parents=True)
    for word in KEYWORDS:  # symlinked FOLDERS, in both layouts
        (archive / word).symlink_to(REAL / word, target_is_directory=True)
        (canonical / word).symlink_to(REAL / word, target_is_directory=True)
    for word, k in OTHERS.items():
        (archive / word).mkdir()
        for clip in _some(REAL / word, k):
            (archive / word / clip.name).symlink_to(clip)
            (canonical / UNKNOWN / f"{word}_{clip.name}").symlink_to(clip)
    for clip in _some(REAL_SILENCE, N_SILENCE):
        (silence / clip.name).symlink_to(clip)
        (canonical / SILENCE / clip.name).symlink_to(clip)
    (archive / "_background_noise_" / "noise.wav").symlink_to(SAMPLE / "_background_noise_" / "pink_noise.wav")
    return {"archive": archive, "canonical": canonical, "silence": silence}


@pytest.fixture(scope="module")
def expected_n() -> int:
    return sum(len(list((REAL / w).glob("*.wav"))) for w in KEYWORDS) + sum(OTHERS.values()) + N_SILENCE


@pytest.fixture(scope="module")
def archive_result(layouts, labels, classify):
    items, layout = collect(layouts["archive"], labels, silence_dir=layouts["silence"])
    return items, layout, score(items, classify, labels, progress=False)


# --------------------------------------------------------------------------- layouts
def test_archive_layout_real_clips(archive_result, layouts, labels, expected_n):
    items, layout, result = archive_result
    assert layout == "archive"
    assert len(items) == expected_n <= 100 and result["n"] == expected_n
    for path, true in items:
        word = path.parent.name
        if path.parent == layouts["silence"]:
            assert true == SILENCE
        elif word in KEYWORDS:
            assert true == word
        else:
            assert word in OTHERS and true == UNKNOWN
        assert path.parent.name != "_background_noise_"
    assert Counter(t for _, t in items) == Counter(
        {**{w: len(list((REAL / w).glob("*.wav"))) for w in KEYWORDS}, UNKNOWN: sum(OTHERS.values()),
         SILENCE: N_SILENCE})
    _consistent(result)
    assert result["errors"] == []
    assert result["labels"] == labels
    assert result["latency_ms"]["p50"] > 0 and result["latency_ms"]["p95"] >= result["latency_ms"]["p50"]
    assert result["accuracy"] > 0.3  # a real (tiny) model, far above the 1-in-5 of a guess


def test_canonical_layout_matches_archive(archive_result, layouts, labels, classify):
    a_items, _, a_result = archive_result
    items, layout = collect(layouts["canonical"], labels)
    assert layout == "canonical"
    assert Counter(t for _, t in items) == Counter(t for _, t in a_items)
    assert {p.resolve(): t for p, t in items} == {p.resolve(): t for p, t in a_items}
    result = score(items, classify, labels, progress=False)
    _consistent(result)
    by_clip = {Path(p["file"]).resolve(): p["predicted"] for p in result["predictions"]}
    assert by_clip == {Path(p["file"]).resolve(): p["predicted"] for p in a_result["predictions"]}
    assert (result["n"], result["correct"], result["accuracy"]) == (a_result["n"], a_result["correct"],
                                                                    a_result["accuracy"])
    assert result["per_class"] == a_result["per_class"]


def test_collect_errors(tmp_path, layouts, labels):
    with pytest.raises(DatasetError, match="not found"):
        collect(tmp_path / "nope", labels)
    (tmp_path / "empty" / "one").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no .wav clips"):
        collect(tmp_path / "empty", labels)
    with pytest.raises(DatasetError, match="not a label of the model"):
        collect(layouts["archive"], labels, layout="canonical")
    with pytest.raises(ConfigError, match="layout"):
        collect(layouts["archive"], labels, layout="flat")
    with pytest.raises(ConfigError, match="_silence_"):
        collect(layouts["archive"], [UNKNOWN, "one"], silence_dir=layouts["silence"])


# --------------------------------------------------------------------------- the command line
def test_cli_json_and_output(bundle, layouts, archive_result, tmp_path):
    out = tmp_path / "res" / "score.json"
    proc = _cli(bundle, layouts["archive"], "--silence-dir", layouts["silence"], "--json", "--output", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == result
    _consistent(result)
    _, _, api = archive_result
    assert (result["n"], result["correct"], result["layout"], result["runtime"]) == (api["n"], api["correct"],
                                                                                     "archive", "tflite")
    assert result["per_class"] == api["per_class"]


def test_cli_human_report_with_list(bundle, layouts, tmp_path):
    listed = ["one/" + _some(REAL / "one", 2)[1].name, "two/" + _some(REAL / "two", 1)[0].name,
              "dog/" + _some(REAL / "dog", 1)[0].name, "one/not_there.wav"]
    list_file = tmp_path / "testing_list.txt"
    list_file.write_text("\n".join(listed) + "\n")
    proc = _cli(bundle, layouts["archive"], "--list", list_file)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert re.search(r"^clips\s+3$", text, re.M), text
    assert re.search(r"^accuracy\s+\d+\.\d %  \(\d/3; 95 % CI \d+\.\d-\d+\.\d %, Wilson\)$", text, re.M), text
    assert re.search(r"^  _unknown_\s+\d+\.\d %\s+1\s", text, re.M), text
    assert re.search(r"^errors\s+0$", text, re.M) and "latency" in text


def test_bad_clips_are_errors_not_crashes(bundle, tmp_path):
    folder = tmp_path / "bad"
    (folder / "one").mkdir(parents=True)
    for clip in _some(REAL / "one", 3):
        (folder / "one" / clip.name).symlink_to(clip)
    (folder / "one" / "corrupt.wav").write_bytes(os.urandom(3000))
    (folder / "one" / "empty.wav").write_bytes(b"")
    proc = _cli(bundle, folder, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] == 5
    _consistent(result)
    errors = {Path(e["file"]).name: e["message"] for e in result["errors"]}
    assert set(errors) == {"corrupt.wav", "empty.wav"}
    assert all(msg.strip() for msg in errors.values())
    assert "empty" in errors["empty.wav"]
    assert result["correct"] <= 3 and result["per_class"]["one"]["n"] == 5


@pytest.mark.parametrize("which", ["folder", "bundle"])
def test_cli_missing_folder_or_bundle(which, bundle, layouts, tmp_path):
    args = (tmp_path / "no-such-bundle", layouts["archive"]) if which == "bundle" else (bundle, tmp_path / "nope")
    proc = _cli(*args)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(args[0 if which == "bundle" else 1]) in lines[0], proc.stderr
    assert proc.stdout == ""


# --------------------------------------------------------------------------- the arithmetic, independently
def test_score_arithmetic_with_a_hand_written_classifier(tmp_path):
    labels = [SILENCE, UNKNOWN, "one", "two"]
    truth = {tmp_path / f"c{i}.wav": lab for i, lab in enumerate(["one"] * 4 + ["two"] * 3 + [UNKNOWN] * 2 + [SILENCE])}
    items = list(truth.items())
    perfect = score(items, lambda p: truth[p], labels, progress=False)
    assert (perfect["n"], perfect["correct"], perfect["accuracy"]) == (10, 10, 1.0)
    assert perfect["confusions"] == [] and perfect["errors"] == []
    assert perfect["ci95"] == pytest.approx(list(wilson(10, 10)))
    assert {k: v["n"] for k, v in perfect["per_class"].items()} == {SILENCE: 1, UNKNOWN: 2, "one": 4, "two": 3}

    wrong = items[0][0]  # a "one" predicted as "two"
    result = score(items, lambda p: "two" if p == wrong else truth[p], labels, progress=False)
    assert (result["correct"], result["accuracy"]) == (9, 0.9)
    assert result["confusions"] == [{"true": "one", "predicted": "two", "count": 1}]
    assert result["per_class"]["one"] == {"n": 4, "correct": 3, "recall": 0.75, "ci95": list(wilson(3, 4))}
    assert result["per_class"]["two"]["recall"] == 1.0

    def failing(p: Path) -> str:
        if p == wrong:
            raise EmptyAudioError("the upload is empty (0 bytes)")
        return truth[p]

    result = score(items, failing, labels, progress=False)
    assert result["correct"] == 9 and result["confusions"] == []
    assert result["errors"] == [{"file": str(wrong), "true": "one", "message": "the upload is empty (0 bytes)"}]
    _consistent(result)
    text = format_report(result, "title")
    assert text.startswith("title\n") and "90.0 %" in text and "errors    1" in text


def test_wilson():
    assert wilson(0, 10)[0] == 0.0
    assert wilson(10, 10)[1] == 1.0
    assert wilson(81, 100) == pytest.approx((0.7222, 0.8749), abs=1e-4)  # scipy: 0.722212, 0.874852
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(11, 10)


# --------------------------------------------------------------------------- promotion's re-scoring
def test_promotions_rescoring_agrees_with_kws_score_and_refuses_other_labels(bundle, classify, labels):
    """`promote` re-scores a champion on the candidate's test split (rendered from
    test_examples.json) — it must give what kws-score gives on the same real files, and a model
    with other labels is not comparable."""
    from dataclasses import asdict

    from kws.dataset import Example
    from kws.errors import NotComparableError
    from kws.labels import task_labels
    from kws.scoring.split_accuracy import bundle_accuracy

    files = [p for w in (*KEYWORDS, "dog", "yes") for p in _some(REAL / w, 6)]
    items = [(p, p.parent.name if p.parent.name in labels else UNKNOWN) for p in files]
    test_set = {"labels": labels, "root": str(REAL), "noise_files": [],
                "examples": [asdict(Example(f"{p.parent.name}/{p.name}", labels.index(t))) for p, t in items]}
    assert bundle_accuracy(bundle, test_set) == pytest.approx(score(items, classify, labels, progress=False)["accuracy"])
    with pytest.raises(NotComparableError, match="predicts"):
        bundle_accuracy(bundle, {**test_set, "labels": task_labels("keywords")})


# --------------------------------------------------------------------------- batches and processes
@pytest.mark.parametrize("workers,batch", [(1, 7), (2, 16)])
def test_batched_scoring_gives_the_clip_by_clip_answers(bundle, layouts, labels, archive_result, workers, batch):
    from kws.scoring.batch import score_bundle

    items, _, clip_by_clip = archive_result
    items = items[::4]  # every word, fewer clips
    want = {p["file"]: p["predicted"] for p in clip_by_clip["predictions"]}
    result = score_bundle(items, bundle, workers=workers, batch=batch, progress=False)
    _consistent(result)
    assert [p["predicted"] for p in result["predictions"]] == [want[str(path)] for path, _ in items]
    assert [p["file"] for p in result["predictions"]] == [str(path) for path, _ in items]
    assert (result["workers"], result["batch"]) == (workers, batch) and result["clips_per_s"] > 0
    assert 0 <= result["startup_s"] < result["seconds"] and result["clips_per_s_scoring"] >= result["clips_per_s"]


def test_batched_int8_gives_the_clip_by_clip_int8_answers(bundle, archive_result):
    """The int8 model in batches of a worker answers what it answers one clip at a time."""
    from kws.scoring.batch import score_bundle

    items = archive_result[0][1::5]
    one_by_one = score(items, bundle_classifier(bundle, runtime="tflite_int8"), archive_result[2]["labels"],
                       progress=False)
    result = score_bundle(items, bundle, runtime="tflite_int8", workers=1, batch=64, progress=False)
    assert result["runtime"] == "tflite_int8" and result["errors"] == []
    assert [p["predicted"] for p in result["predictions"]] == [p["predicted"] for p in one_by_one["predictions"]]


def test_batches_are_cut_so_every_worker_gets_several():
    from kws.scoring.batch import CHUNKS_PER_WORKER, chunks

    paths = [f"c{i}.wav" for i in range(1000)]
    parts = chunks(paths, 256, 2)
    assert [p for part in parts for p in part] == paths
    assert max(map(len, parts)) <= 256 and len(parts) >= 2 * CHUNKS_PER_WORKER
    assert chunks(paths, 10, 2) == [paths[i:i + 10] for i in range(0, 1000, 10)]
    assert chunks(paths[:3], 256, 4) == [["c0.wav"], ["c1.wav"], ["c2.wav"]]


def test_batched_scoring_keeps_bad_clips_as_errors(bundle, tmp_path):
    from kws.scoring.batch import score_bundle

    good = _some(REAL / "one", 5)
    (tmp_path / "corrupt.wav").write_bytes(os.urandom(3000))
    (tmp_path / "empty.wav").write_bytes(b"")
    items = [(good[0], "one"), (tmp_path / "corrupt.wav", "one"), *[(p, "one") for p in good[1:3]],
             (tmp_path / "empty.wav", "one"), (good[3], "one")]
    result = score_bundle(items, bundle, workers=2, batch=2, progress=False)
    _consistent(result)
    assert [Path(e["file"]).name for e in result["errors"]] == ["corrupt.wav", "empty.wav"]
    assert [p["predicted"] is None for p in result["predictions"]] == [False, True, False, False, True, False]


def test_batched_scoring_reports_each_unreadable_or_silent_clip(bundle, tmp_path):
    """A batch with a dangling link, a silent clip and a folder named like a clip: one error each, the
    good clips of the same batch still answered (one worker, one batch)."""
    from kws.scoring.batch import score_bundle
    from tests.support.bundles import wav_bytes

    good = _some(REAL / "two", 3)
    (tmp_path / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    (tmp_path / "silent.wav").write_bytes(wav_bytes(np.zeros(16000, np.float32)))
    (tmp_path / "folder.wav").mkdir()
    bad = [tmp_path / "gone.wav", tmp_path / "silent.wav", tmp_path / "folder.wav"]
    items = [(good[0], "two"), *[(p, "two") for p in bad], *[(p, "two") for p in good[1:]]]
    result = score_bundle(items, bundle, workers=1, batch=64, progress=False)
    _consistent(result)
    errors = {Path(e["file"]).name: e["message"] for e in result["errors"]}
    assert set(errors) == {"gone.wav", "silent.wav", "folder.wav"}
    assert "cannot read" in errors["gone.wav"] and "silent" in errors["silent.wav"]
    assert [p["predicted"] is not None for p in result["predictions"]] == [True, False, False, False, True, True]


@pytest.mark.parametrize("kwargs", [{"workers": 0}, {"workers": -2}, {"batch": 0}])
def test_score_bundle_refuses_bad_workers_or_batch(bundle, kwargs):
    from kws.scoring.batch import score_bundle

    with pytest.raises(ConfigError, match="at least 1"):
        score_bundle([(_some(REAL / "one", 1)[0], "one")], bundle, progress=False, **kwargs)


def test_cli_rejects_bad_workers_and_reports_speed(bundle, layouts):
    proc = _cli(bundle, layouts["archive"], "--workers", "0")
    assert proc.returncode == 1 and "--workers must be at least 1" in proc.stderr and "Traceback" not in proc.stderr
    for bad in (["--workers", "-1"], ["--batch", "0"]):
        proc = _cli(bundle, layouts["archive"], *bad)
        assert proc.returncode == 1 and f"{bad[0]} must be at least 1" in proc.stderr, proc.stderr
    proc = _cli(bundle, layouts["archive"], "--workers", "two")
    assert proc.returncode == 2 and "invalid int value" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli(bundle, layouts["archive"], "--limit", "30", "--workers", "2", "--batch", "8")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^speed\s+\d+ clips/s \(2 workers, batches of 8\)$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^\s+\d+ clips/s once started \(start-up \d+\.\d s of \d+\.\d s\)$", proc.stdout, re.M)
