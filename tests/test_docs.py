"""The docs against what they describe: generated tables equal to the results, links that resolve,
result files small enough for git, and the README's commands the ones CI runs."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_RESULT_BYTES = 500_000
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _report():
    spec = importlib.util.spec_from_file_location("report", REPO / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _report()
import real_pooling  # noqa: E402  (benchmarks/ is on sys.path once report.py is loaded)
import report_streams  # noqa: E402

DOCS = [p for p in report.docs() if p.is_file()]


def test_every_table_agrees_with_the_results():
    assert report.stale() == [], "run `python benchmarks/report.py` to regenerate them"


def test_every_marker_names_a_known_table():
    for path in DOCS:
        for m in report.MARKER.finditer(path.read_text()):
            assert m.group(2) in report.TABLES, f"{path.name}: unknown table {m.group(2)!r}"


def test_the_readme_has_its_results_tables_only():
    """Accuracy, and one summary row per serving benchmark (the issues ask for those figures in the
    README); every other table belongs in docs/."""
    names = [m.group(2) for m in report.MARKER.finditer((REPO / "README.md").read_text())]
    assert names == ["real", "real-streams", "serving-summary"]


def test_a_changed_figure_is_reported_stale(tmp_path):
    """Edit one figure of a generated table: the check names that table, and a rewrite restores it."""
    text = (REPO / "README.md").read_text()
    table = next(report.MARKER.finditer(text)).group(0)
    tampered = table.replace(next(iter(re.findall(r"\d+\.\d", table))), "12.3", 1)
    assert tampered != table
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n\n" + tampered + "\n")
    assert report.stale([doc]) == [f"{doc}: table real"]
    assert report.rewrite(tampered) == table


def test_an_unknown_table_is_an_error():
    with pytest.raises(KeyError, match="no-such-table"):
        report.rewrite("<!-- table:no-such-table -->\n<!-- /table -->")


def _links():
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks hold commands, not links
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            yield path, target


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("doc,target", [(p.relative_to(REPO).as_posix(), t) for p, t in _links()])
def test_every_relative_link_points_to_a_file(doc, target):
    name, _, anchor = target.partition("#")
    path = (REPO / doc).parent / name
    assert path.exists(), f"{doc} links to missing {target}"
    if anchor:
        assert anchor in _anchors(path), f"{doc} links to {target}: no such heading in {name}"


def test_no_tracked_result_file_is_over_the_limit():
    files = subprocess.run(["git", "ls-files", "-z", "benchmarks/results"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    sizes = {f: (REPO / f).stat().st_size for f in files if f and (REPO / f).is_file()}
    assert sizes, "no result files tracked under benchmarks/results"
    assert {f: s for f, s in sizes.items() if s > MAX_RESULT_BYTES} == {}


def test_the_readme_shows_the_commands_ci_runs():
    """`.ci/run` runs the README's set-up and test commands; both stay in the README as they are."""
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    for command in ("./scripts/setup.sh", ".venv/bin/python -m pytest"):
        assert command in ci and f"\n{command}\n" in readme


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


# --------------------------------------------------------------------------- the pooled DET curve and its figure
def _fold(det, said=10, hours=0.5):
    return {"det": det, "keywords_said": said, "hours": hours}


def test_the_folds_curves_pool_by_threshold():
    """Counts add up per threshold; a threshold one fold lacks is left out; a fold without its curve: none."""
    a = _fold([[0.5, 8, 2], [0.7, 6, 1], [0.9, 3, 0]], said=10, hours=0.5)
    b = _fold([[0.5, 9, 4], [0.7, 5, 0]], said=20, hours=1.5)
    det = real_pooling.pooled_det([a, b])
    assert [r["threshold"] for r in det] == [0.5, 0.7]
    assert det[0]["recall"] == pytest.approx(17 / 30) and det[0]["false_accepts_per_hour"] == pytest.approx(6 / 2.0)
    assert det[1]["miss_rate"] == pytest.approx(1 - 11 / 30) and det[1]["false_accepts"] == 1
    assert real_pooling.pooled_det([a, {"keywords_said": 5, "hours": 1.0}]) is None


def test_a_curve_keeps_hits_as_counts():
    curve = [{"threshold": 0.5, "recall": 0.666667, "hits": 2, "false_accepts": 3},
             {"threshold": 0.6, "recall": None, "hits": 0, "false_accepts": 0}]
    assert real_pooling.det_rows(curve) == [[0.5, 2, 3], [0.6, 0, 0]]


def test_a_compact_result_keeps_the_pooled_curve_and_drops_the_folds():
    fold = {"fold": 0, "ours": {"accuracy": 0.9}, "variants": {"int8": {}},
            "stream": {"tflite": {"recall": 0.7, "hits": 7, "det": [[0.5, 7, 1]]}}}
    run = {"machine": {}, "candidates": {"a": {"ours": {}, "per_fold": [fold],
                                               "stream": {"tflite": {"recall": 0.7, "det": [{"threshold": 0.5}]}}}}}
    out = real_pooling.compact(run)
    f = out["candidates"]["a"]["per_fold"][0]
    assert "variants" not in f and f["stream"]["tflite"] == {"recall": 0.7, "hits": 7} and f["ours"] == fold["ours"]
    assert out["candidates"]["a"]["stream"] == run["candidates"]["a"]["stream"] and out["note"]
    assert "variants" in fold and "det" in fold["stream"]["tflite"]  # the run itself is left as it was


def test_the_learning_curve_counts_the_splits_training_speakers():
    """The figure's speaker counts are the speaker split's own, on the pool the folds are cut from."""
    from kws.splits import TRAIN, speaker_of, split_speakers
    from tests.support.paths import DATA

    pool = DATA / "speech_commands_real"
    if not pool.is_dir():
        pytest.skip(f"the real pool is not under {DATA}")
    speakers = {speaker_of(p) for p in pool.glob("*/*.wav")}
    counts = tuple(sum(v == TRAIN for v in split_speakers(speakers, 5, fold, 10.0, 42).values()) for fold in range(5))
    assert counts == report_streams.TRAIN_SPEAKERS


def test_the_learning_curve_extends_the_last_doublings_gain():
    rows = [{"speakers": 25.0, "r": 0.3}, {"speakers": 50.0, "r": 0.6}, {"speakers": 100.0, "r": 0.7}]
    assert report_streams.last_gain(rows, "r") == pytest.approx(0.1)
    assert report_streams.speakers_for(rows, "r", 0.9) == pytest.approx(400.0)  # two more doublings of +0.1
    assert report_streams.speakers_for([{**r, "r": 1 - r["r"]} for r in rows], "r", 0.9) is None
    assert report_streams.train_share(["train.epochs=3", "+data.split.train_share=0.25"]) == 0.25
    assert report_streams.train_share([]) == 1.0


def test_the_det_table_reads_budgets_and_goals_off_the_curve():
    det = [{"recall": 0.95, "false_accepts_per_hour": 40.0}, {"recall": 0.9, "false_accepts_per_hour": 24.0},
           {"recall": 0.8, "false_accepts_per_hour": 9.0}, {"recall": 0.6, "false_accepts_per_hour": 0.0}]
    assert report_streams.best_recall(det, 10.0) == 0.8 and report_streams.best_recall(det, 30.0) == 0.9
    assert report_streams.best_recall([{"recall": 0.5, "false_accepts_per_hour": 12.0}], 10.0) is None
    assert report_streams.fa_for_recall(det, 0.9) == 24.0 and report_streams.fa_for_recall(det, 0.99) is None


def test_a_figure_drawn_from_other_results_is_stale(tmp_path, monkeypatch):
    """Drawn: not stale; its data changed, or the file is no PNG of ours: named stale; redrawn: fresh again."""
    png = tmp_path / "det.png"
    shown = {"curves": {"a": [{"false_accepts_per_hour": 1.0, "miss_rate": 0.4}, {"false_accepts_per_hour": 20.0, "miss_rate": 0.1}]}}

    def figure():
        from kws.streaming.benchmark import plot_det

        data = json.loads(json.dumps(shown))
        return data, lambda path, meta: plot_det(data["curves"], {}, path, "t", 10.0, goal_recall=0.9, metadata=meta)

    monkeypatch.setattr(report_streams, "FIGURES", {str(png): figure})
    assert report_streams.stale_figures() == [f"{png}: figure"]  # missing
    assert report_streams.write_figures() == [str(png)] and png.stat().st_size > 0
    assert report_streams.stale_figures() == [] and report_streams.write_figures() == []
    shown["curves"]["a"][0]["miss_rate"] = 0.3
    assert report_streams.stale_figures() == [f"{png}: figure"]
    report_streams.write_figures()
    assert report_streams.stale_figures() == []
    png.write_bytes(b"not a png")
    assert report_streams.stale_figures() == [f"{png}: figure"]
