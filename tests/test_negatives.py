"""Training-only negatives (kws.negatives): seeded, every installed TTS engine speaks, no keyword in the
vocabulary, cut windows labelled by how much keyword they hold, and never in validation or test."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from kws import tts
from kws.errors import ConfigError
from kws.labels import KEYWORDS, UNKNOWN
from kws.negatives import (
    MANIFEST, UNKNOWN_CUTS, _window, check_settings, choose_voices, cut_label, deal_words, generate, homophones,
    read_vocabulary,
)

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "speech_commands_real"
ENGINES = tts.installed()
needs_tts = pytest.mark.skipif(not ENGINES, reason="no TTS engine installed (scripts/setup.sh installs them)")


def _settings(tmp_path: Path, **overrides) -> dict:
    """conf/negatives/default.yaml made tiny: one speaker per installed engine, three words each."""
    settings = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "negatives" / "default.yaml"))
    vocabulary = tmp_path / "words.txt"
    vocabulary.write_text("# near misses\nyet now dawn\nlift bright\n")
    settings.update(vocabulary=str(vocabulary), engines={e: 1 for e in tts.ENGINES}, close_words=3,
                    voices_per_close_word=len(ENGINES), voices_per_word=1, keyword_takes=1)
    settings["cuts"]["per_voice"] = 6
    settings["noise_dir"] = str(REPO.parent / "shared" / "data" / "speech_commands_sample" / "_background_noise_")
    settings.update(overrides)
    return settings


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _manifest(root: Path) -> list[dict]:
    with open(root / MANIFEST, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict, dict]:
    tmp = tmp_path_factory.mktemp("negatives")
    settings = check_settings(_settings(tmp))
    root = tmp / "negatives"
    return root, generate(root, **settings, workers=1, progress=False), settings


# --- the vocabulary -------------------------------------------------------------------------------
def test_vocabulary_has_hundreds_of_words_close_ones_first_and_no_keyword():
    words = read_vocabulary(REPO / "conf" / "negatives" / "words.txt")
    assert len(words) >= 300 and len(set(words)) == len(words)
    assert not set(words) & set(KEYWORDS)
    assert not {w for w in words for k in KEYWORDS if w in (k + "s", k + "ed", k + "ing", k + "ped", k + "ping")}
    close = words[: OmegaConf.load(REPO / "conf" / "negatives" / "default.yaml").close_words]
    for near in ("yet", "now", "dawn", "lift", "bright", "top", "cup", "goat", "of", "one", "front", "back"):
        assert near in close, near
    assert homophones(words) == {}


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_a_word_said_exactly_like_a_keyword_is_refused(tmp_path):
    """'know' is 'no' and 'write' is 'right' to a listener: as `_unknown_` they would teach the model
    that the keyword's own sound is no keyword (a near miss like 'now' is kept)."""
    assert homophones(["know", "now", "write", "bright", "dawn"]) == {"know": "no", "write": "right"}
    path = tmp_path / "words.txt"
    path.write_text("yet now\nknow\n")
    with pytest.raises(ConfigError, match="'know' sounds like 'no'"):
        read_vocabulary(path)


@pytest.mark.parametrize("line", ["yet stop dawn", "stopped", "dawn Dawn", "yet yet", "r2d2"])
def test_a_keyword_an_inflection_a_repeat_or_a_non_word_is_refused(tmp_path, line):
    path = tmp_path / "words.txt"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match="not a keyword"):
        read_vocabulary(path)


# --- the cut-window rule ----------------------------------------------------------------------------
@pytest.mark.parametrize("shares, label", [
    ([("yes", 0.95)], "yes"),
    ([("yes", 0.70)], "yes"),               # >= 70 %: the keyword
    ([("yes", 0.69)], None),                # between: left out
    ([("yes", 0.30)], None),
    ([("yes", 0.29)], UNKNOWN),             # < 30 %: _unknown_
    ([("dawn", 0.5)], UNKNOWN),             # any share of another word
    ([("dawn", 1.0), ("left", 0.8)], "left"),
    ([("dawn", 1.0), ("left", 0.1)], UNKNOWN),
    ([("up", 0.9), ("go", 0.5)], None),     # a second keyword half inside
    ([("up", 0.9), ("go", 0.1)], "up"),
    ([("up", 0.9), ("go", 0.8)], None),     # two keywords: no one label
])
def test_cut_windows_are_labelled_by_how_much_keyword_is_inside(shares, label):
    assert cut_label(shares, keyword_min=0.7, unknown_max=0.3) == label


def test_window_reports_the_share_of_each_word_inside():
    a, b = np.ones(8000, np.float32), np.full(4000, 2.0, np.float32)
    window, shares, speech = _window([a, b], gap=2000, start=6000)  # the last 2000 of a, the gap, all of b
    assert len(window) == 16000 and shares == [0.25, 1.0] and speech == 6000
    assert np.all(window[:2000] == 1) and np.all(window[2000:4000] == 0) and np.all(window[4000:8000] == 2)
    window, shares, _ = _window([a], gap=0, start=-12000)  # the window ends 4000 into a
    assert shares == [0.5] and np.all(window[:12000] == 0) and np.all(window[12000:] == 1)


# --- generation ---------------------------------------------------------------------------------------
@needs_tts
def test_every_installed_engine_says_negatives_and_keywords(tiny):
    root, summary, _ = tiny
    rows = _manifest(root)
    assert set(summary["engines"]) == set(ENGINES)
    for engine in ENGINES:
        mine = [r for r in rows if r["engine"] == engine]
        assert {r["label"] for r in mine if r["kind"] == "word"} >= {UNKNOWN, *KEYWORDS}, engine
        assert any(r["kind"] != "word" for r in mine), engine
    assert summary["clips"] == len(rows) == len(list(root.glob("*/*.wav"))) - summary["impulse_responses"] \
        - len(summary["noise_files"])


@needs_tts
def test_clips_are_one_second_of_sound_filed_by_label(tiny):
    root, _, settings = tiny
    for row in _manifest(root):
        path = root / row["path"]
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 16000)
        assert np.max(np.abs(sf.read(str(path), dtype="float32")[0])) > 0.01, row
        folder = row["path"].split("/")[0]
        if row["kind"] == "word":
            assert folder == row["words"]
        else:
            shares = list(zip(row["words"].split("+"), map(float, row["share"].split("+"))))
            cuts = settings["cuts"]
            assert cut_label(shares, cuts["keyword_min"], cuts["unknown_max"]) == row["label"]
            assert folder == (row["label"] if row["label"] in KEYWORDS else UNKNOWN_CUTS)
            if row["kind"] == "junction":  # the end of one word and the start of the next
                assert len(shares) == 2 and all(share > 0 for _, share in shares), row
            else:
                assert len(shares) == 1 and (shares[0][0] in KEYWORDS) == (row["kind"] == "edge"), row


@needs_tts
def test_same_settings_give_identical_bytes_in_parallel(tiny, tmp_path):
    root, _, settings = tiny
    again = tmp_path / "again"
    generate(again, **settings, workers=2, progress=False)
    assert _tree(again) == _tree(root)


@needs_tts
def test_another_seed_gives_other_speakers_and_other_words_per_speaker():
    engines = {e: 3 for e in ENGINES}
    a = choose_voices(engines, 1, (0.85, 1.25), (0.9, 1.12))
    b = choose_voices(engines, 2, (0.85, 1.25), (0.9, 1.12))
    assert len(a) == len(b) == 3 * len(ENGINES) and {v.hash for v in a}.isdisjoint({v.hash for v in b})
    words = [f"w{chr(97 + i)}" for i in range(12)]
    dealt = deal_words(words, 4, close=4, per_close=3, per_word=1, seed=1)
    assert sorted(w for said in dealt for w in said) == sorted(words[:4] * 3 + words[4:])
    assert {len(said) for said in dealt} == {5}  # an equal share each
    assert dealt != deal_words(words, 4, close=4, per_close=3, per_word=1, seed=2)


# --- training only -----------------------------------------------------------------------------------
@needs_tts
def test_negatives_are_only_in_the_training_split(tiny):
    from kws.dataset import AugmentConfig, ExtraSource, SplitConfig, build_index
    from kws.labels import task_labels

    if not REAL.is_dir():
        pytest.skip(f"real clips not found at {REAL}")
    root, _, _ = tiny
    kwargs = dict(silence_percentage=0.0, unknown_percentage=12.0, validation_percentage=10.0,
                  testing_percentage=10.0, augment=AugmentConfig(copies=1), clip_samples=16000,
                  sample_rate=16000, seed=3, split=SplitConfig(method="speakers"))
    labels = task_labels("keywords")
    plain, plain_summary = build_index(REAL, labels, **kwargs)
    index, summary = build_index(REAL, labels, **kwargs, extra=[ExtraSource(root, "negatives", 0.5, 300.0)])
    negatives = [e for e in index["train"] if e.origin == 1]
    assert {labels[e.label] for e in negatives} >= {UNKNOWN, *KEYWORDS}
    assert all(e.weight == 0.5 for e in negatives)
    for split in ("validation", "test"):
        assert all(e.origin == 0 for e in index[split]) and index[split] == plain[split]
    assert summary["test_digest"] == plain_summary["test_digest"]
    assert summary["extra_sources"][0]["name"] == "negatives"


@needs_tts
def test_download_stage_writes_it_as_an_extra_source_and_refuses_it_as_the_dataset(tmp_path, caplog):
    from kws.stages.download import download, download_extra

    settings = _settings(tmp_path, engines={next(iter(ENGINES)): 1}, close_words=1, voices_per_close_word=1,
                         voices_per_word=0)
    settings["cuts"]["per_voice"] = 0
    data = OmegaConf.create({"extra": [{"name": "negatives", "source": "negatives", "negatives": settings}]})
    extra = tmp_path / "extra"
    info = download_extra(data, extra, {})["negatives"]
    assert info["source"] == "negatives" and len(info["negatives"]["vocabulary_sha256"]) == 64
    assert (extra / "negatives" / "yet").is_dir() and (extra / "negatives" / "yes").is_dir()
    caplog.set_level("INFO", logger="kws.stages.download")
    download_extra(data, extra, {})
    assert "already downloaded" in caplog.text
    Path(settings["vocabulary"]).write_text("dawn\n")  # an edited word list: generated again
    assert (download_extra(data, extra, {})["negatives"]["negatives"]["vocabulary_sha256"]
            != info["negatives"]["vocabulary_sha256"])
    assert (extra / "negatives" / "dawn").is_dir() and not (extra / "negatives" / "yet").exists()

    params = tmp_path / "params.yaml"
    params.write_text(OmegaConf.to_yaml({"data": {"source": "negatives", "negatives": settings}}))
    with pytest.raises(ConfigError, match="training-only"):
        download(params, dest=tmp_path / "ds")
    shutil.rmtree(extra)


def test_the_served_recipe_is_unchanged_and_the_experiment_adds_negatives():
    from kws.config import compose

    served = compose(["data=speech_commands_real"], conf_dir=REPO / "conf")
    assert [e.source for e in served.data.extra] == ["synthetic"]
    trial = compose(["data=speech_commands_real_negatives", "negatives.cuts.per_voice=7"], conf_dir=REPO / "conf")
    assert [e.source for e in trial.data.extra] == ["synthetic", "negatives"]
    assert trial.data.extra[0] == served.data.extra[0]
    assert (trial.data.name, trial.data.split) == (served.data.name, served.data.split)
    node = OmegaConf.to_container(trial.data.extra[1].negatives, resolve=True)
    assert node["cuts"]["per_voice"] == 7
    check_settings({**node, "vocabulary": str(REPO / node["vocabulary"])})
    with pytest.raises(ConfigError, match="missing"):
        check_settings({k: v for k, v in node.items() if k != "cuts"})
