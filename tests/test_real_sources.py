"""Local and mixed data sources on REAL clips from ../shared/data: a folder source with
symlinked word folders, noise and silence from other folders, the seeded speaker split,
and extra sources that only ever reach the training split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kws.artifacts import TEST_EXAMPLES_FILE
from kws.config import compose, write_params
from kws.errors import ConfigError, DatasetError
from kws.data.install import materialize_dataset, tree_digest
from kws.labels import SILENCE, UNKNOWN
from kws.splits import TEST, TRAIN, UNUSED, VALIDATION, assign_splits, speaker_of, split_speakers
from kws.stages.download import download
from kws.stages.prepare import prepare
from tests.support.paths import DATA as SHARED

REAL, SILENCE_DIR = SHARED / "speech_commands_real", SHARED / "speech_commands_real_silence"
NOISE = SHARED / "speech_commands_sample" / "_background_noise_"
KEYWORDS = ("yes", "no")
UNKNOWN_WORDS = ("dog", "wow", "bed")


@pytest.fixture(scope="module")
def real() -> Path:
    if not (REAL.is_dir() and SILENCE_DIR.is_dir() and NOISE.is_dir()):
        pytest.skip(f"real Speech Commands clips not found under {SHARED}")
    return REAL


@pytest.fixture
def pool(tmp_path, real) -> Path:
    """A small pool in the archive layout: SYMLINKED whole word folders for the unknown words,
    and per-file links for the first 24 speakers of two keywords; no _background_noise_."""
    root = tmp_path / "pool"
    root.mkdir()
    for word in UNKNOWN_WORDS:
        (root / word).symlink_to(real / word, target_is_directory=True)
    speakers = sorted({speaker_of(p) for p in (real / "yes").glob("*.wav")})[:24]
    for word in KEYWORDS:
        (root / word).mkdir()
        for clip in (real / word).glob("*.wav"):
            if speaker_of(clip) in speakers:
                (root / word / clip.name).symlink_to(clip)
    return root


def _params(tmp_path: Path, source: Path, *overrides: str) -> Path:
    cfg = compose(["data=speech_commands_real", f"data.source={source}", f"data.noise_dir={NOISE}",
                   f"data.silence_dir={SILENCE_DIR}", f"paths.dataset={tmp_path}/raw/speech_commands",
                   f"paths.extra={tmp_path}/raw/extra", f"paths.canonical={tmp_path}/raw/canonical_test",
                   f"paths.features={tmp_path}/features",
                   "prepare.workers=2", "prepare.augment.copies=1",
                   "data.extra=[]",  # the pool alone (its default synthetic extra source: tests below)
                   *overrides])
    write_params(cfg, tmp_path / "params.yaml")
    return tmp_path / "params.yaml"


def _load(out: Path, split: str):
    with np.load(out / f"{split}.npz") as d:
        return d["y"], d["w"], [str(f) for f in d["files"]]


# --- the folder source -----------------------------------------------------------------------
def test_folder_source_needs_no_archive_checksum_and_takes_noise_and_silence_dirs(tmp_path, pool):
    # the archive's sha256 is configured (the default data config's): it does not apply to a folder
    params = _params(tmp_path, pool, "data.sha256=af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58")
    info = download(params, progress=False)
    dest = tmp_path / "raw" / "speech_commands"
    assert info["sha256"] == tree_digest(pool)  # the digest of the folder's file list, recorded
    assert sorted(p.name for p in dest.iterdir()) == sorted([*KEYWORDS, *UNKNOWN_WORDS, SILENCE, "_background_noise_"])
    assert len(list((dest / "dog").glob("*.wav"))) == len(list((REAL / "dog").glob("*.wav")))  # symlinked folder followed
    assert sorted(p.name for p in (dest / SILENCE).iterdir()) == sorted(p.name for p in SILENCE_DIR.glob("*.wav"))
    assert sorted(p.name for p in (dest / "_background_noise_").iterdir()) == sorted(p.name for p in NOISE.glob("*.wav"))
    assert set(info["added"]) == {SILENCE, "_background_noise_"}
    assert (tmp_path / "raw" / "extra").is_dir() and not list((tmp_path / "raw" / "extra").iterdir())

    again = download(params, progress=False)  # up to date: nothing copied again
    assert again["fetched_at"] == info["fetched_at"]
    # another silence folder is a different dataset: materialized again
    other = tmp_path / "other_silence"
    other.mkdir()
    for clip in sorted(SILENCE_DIR.glob("*.wav"))[:5]:
        (other / clip.name).symlink_to(clip)
    info3 = materialize_dataset(str(pool), dest, progress=False, add_dirs={SILENCE: other, "_background_noise_": NOISE})
    assert len(list((dest / SILENCE).iterdir())) == 5 and info3["added"][SILENCE]["source"] == str(other)


def test_missing_silence_dir_is_a_clear_error(tmp_path, pool):
    from kws.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist: fix data.noise_dir / data.silence_dir"):
        materialize_dataset(str(pool), tmp_path / "d", add_dirs={SILENCE: tmp_path / "nowhere"})
    assert not (tmp_path / "d").exists()


# --- splits ------------------------------------------------------------------------------------
def test_hash_rule_leaves_this_pool_without_training_speakers_the_speaker_split_does_not(tmp_path, pool):
    """The pool's speakers were chosen for the canonical TEST set by the hash rule, so that rule
    puts them all in `test`; the seeded speaker split gives three non-empty, disjoint splits."""
    download(_params(tmp_path, pool), progress=False)
    dataset = tmp_path / "raw" / "speech_commands"
    with pytest.raises(DatasetError, match="split .* is empty"):
        prepare(compose(["data=speech_commands_real", "data.extra=[]", "data.split.method=hash", "prepare.workers=2"]),
                dataset, tmp_path / "hash")
    cfg = compose(["data=speech_commands_real", "data.extra=[]", "prepare.workers=2", "prepare.augment.copies=1"])
    meta = prepare(cfg, dataset, tmp_path / "features")
    assert meta["split_method"] == "speakers" and meta["dataset"] == "speech_commands_real"
    speakers = {}
    for split in (TRAIN, VALIDATION, TEST):
        y, _, files = _load(tmp_path / "features", split)
        words = [f for f in files if not f.startswith(SILENCE)]
        speakers[split] = {speaker_of(f) for f in words}
        assert speakers[split], f"{split} has no speakers"
        assert meta["speakers_per_split"][split] >= len(speakers[split])  # some only said unsampled unknown words
        # real silence clips in every split; validation/test silence is only real clips
        silence = [f for f, k in zip(files, y) if meta["labels"][k] == SILENCE]
        assert any(f.startswith(f"{SILENCE}/") for f in silence)
        if split != TRAIN:
            assert all(f.startswith(f"{SILENCE}/") for f in silence)
    assert not speakers[TRAIN] & speakers[VALIDATION] and not speakers[TRAIN] & speakers[TEST]
    assert not speakers[VALIDATION] & speakers[TEST]
    everyone = {speaker_of(p) for p in dataset.glob("*/*.wav") if not p.parent.name.startswith("_")}
    assert sum(meta["speakers_per_split"].values()) == len(everyone)
    # every speaker is a test speaker in exactly one of the folds
    tested = Counter()
    for fold in range(cfg.data.split.folds):
        split_of = split_speakers(everyone, cfg.data.split.folds, fold, cfg.data.split.validation_percentage, cfg.seed)
        tested.update(s for s, part in split_of.items() if part == TEST)
    assert set(tested.values()) == {1} and len(tested) == len(everyone)
    test_set = json.loads((tmp_path / "features" / TEST_EXAMPLES_FILE).read_text())
    assert test_set["digest"] == meta["test_digest"] and len(test_set["examples"]) == meta["counts"][TEST]


@pytest.mark.parametrize("n_speakers,folds", [(2, 5), (3, 3), (7, 5), (40, 5)])
def test_speaker_split_never_empty_or_refuses(n_speakers, folds):
    speakers = [f"{i:08x}" for i in range(n_speakers)]
    if n_speakers < folds:
        with pytest.raises(DatasetError, match="speakers for"):
            split_speakers(speakers, folds, 0, 10, seed=1)
        return
    for test_fold in range(folds):
        split_of = split_speakers(speakers, folds, test_fold, 10, seed=1)
        assert set(split_of.values()) == {TRAIN, VALIDATION, TEST}
        assert split_speakers(list(reversed(speakers)), folds, test_fold, 10, seed=1) == split_of  # order-free



@pytest.mark.parametrize("share", [0.25, 0.5, 1.0])
def test_train_share_drops_training_speakers_only(share):
    """A learning curve in speakers: a share of the training speakers is kept, the rest unused,
    and validation and test are the same speakers at every share."""
    speakers = [f"{i:08x}" for i in range(60)]
    full = split_speakers(speakers, 5, 2, 10, seed=3)
    part = split_speakers(speakers, 5, 2, 10, seed=3, train_share=share)
    for split in (VALIDATION, TEST):
        assert {s for s, v in part.items() if v == split} == {s for s, v in full.items() if v == split}
    trained = {s for s, v in full.items() if v == TRAIN}
    kept = {s for s, v in part.items() if v == TRAIN}
    assert kept <= trained and len(kept) == int(np.ceil(len(trained) * share))
    assert {s for s, v in part.items() if v == UNUSED} == trained - kept
    with pytest.raises(ConfigError, match="train_share"):
        split_speakers(speakers, 5, 2, 10, seed=3, train_share=0.0)
    with pytest.raises(ConfigError, match="needs data.split.method=speakers"):
        assign_splits(Path("."), ["yes/a_nohash_0.wav"], 10, 10, method="hash", train_share=0.5)


def test_train_share_in_prepare_keeps_the_test_set(tmp_path, pool):
    download(_params(tmp_path, pool), progress=False)
    dataset = tmp_path / "raw" / "speech_commands"
    base = ["data=speech_commands_real", "data.extra=[]", "prepare.workers=2", "prepare.augment.copies=0"]
    full = prepare(compose(base), dataset, tmp_path / "full")
    half = prepare(compose([*base, "+data.split.train_share=0.5"]), dataset, tmp_path / "half")
    assert half["test_digest"] == full["test_digest"] and half["counts"][VALIDATION] == full["counts"][VALIDATION]
    assert 0 < half["counts"][TRAIN] < full["counts"][TRAIN]
    assert half["speakers_unused"] > 0 == full["speakers_unused"]
    assert half["speakers_per_split"][TRAIN] + half["speakers_unused"] == full["speakers_per_split"][TRAIN]

# --- extra, training-only sources ---------------------------------------------------------------
def _tone_source(root: Path, words: tuple[str, ...], per_word: int) -> Path:
    rng = np.random.default_rng(0)
    for k, word in enumerate(words):
        (root / word).mkdir(parents=True)
        for i in range(per_word):
            t = np.arange(16000) / 16000
            wave = 0.3 * np.sin(2 * np.pi * (300 + 50 * k) * t) + 0.01 * rng.standard_normal(16000)
            sf.write(root / word / f"synth{i:04d}_nohash_0.wav", wave.astype(np.float32), 16000, subtype="PCM_16")
    return root


def test_extra_source_reaches_training_only_and_never_fills_the_unknown_share(tmp_path, pool):
    extra_src = _tone_source(tmp_path / "extra_src", (*KEYWORDS, "cat", "tree", "happy"), per_word=20)
    download(_params(tmp_path, pool), progress=False)
    plain = prepare(compose(["data=speech_commands_real", "data.extra=[]", "prepare.workers=2", "prepare.augment.copies=1",
                             f"paths.extra={tmp_path}/raw/extra"]), tmp_path / "raw" / "speech_commands",
                    tmp_path / "plain")

    params = _params(tmp_path, pool, f"data.extra=[{{name: tones, source: '{extra_src}', weight: 0.25}}]")
    info = download(params, progress=False)
    assert info["extra"]["tones"]["n_words"] == 5
    assert download(params, progress=False)["extra"]["tones"]["fetched_at"] == info["extra"]["tones"]["fetched_at"]
    from kws.config import load_params

    cfg = load_params(params)
    meta = prepare(cfg, Path(cfg.paths.dataset), tmp_path / "mixed")
    assert meta["extra_sources"][0]["name"] == "tones"
    y, w, files = _load(tmp_path / "mixed", TRAIN)
    synth = np.asarray([speaker_of(f).startswith("synth") for f in files])
    assert synth.any() and np.all(w[synth] == 0.25) and np.all(w[~synth] == 1.0)
    for split in (VALIDATION, TEST):  # validation and test are exactly what they are without the extra source
        assert _load(tmp_path / "mixed", split)[2] == _load(tmp_path / "plain", split)[2]
    unknown = meta["labels"].index(UNKNOWN)
    y0, _, files0 = _load(tmp_path / "plain", TRAIN)
    real_unknown = sorted(f for f, k, s in zip(files, y, synth) if k == unknown and not s)
    assert real_unknown == sorted(f for f, k in zip(files0, y0) if k == unknown)  # the real unknown share is untouched
    # the extra source brings its own unknown words at the same share of ITS keywords
    n_kw = int(np.sum(synth & np.isin(y, [meta["labels"].index(k) for k in KEYWORDS])))
    n_unk = int(np.sum(synth & (y == unknown)))
    assert 0 < n_unk <= int(np.ceil(n_kw * cfg.prepare.unknown_percentage / 100)) + 1
    assert plain["test_digest"] == meta["test_digest"]

    # an entry's own unknown_percentage: 150 % of its 40 keyword clips = all 60 of its unknown clips
    params = _params(tmp_path, pool, "data.extra=[{name: tones, source: '%s', weight: 0.25, "
                                     "unknown_percentage: 150}]" % extra_src)
    download(params, progress=False)
    cfg = load_params(params)
    meta = prepare(cfg, Path(cfg.paths.dataset), tmp_path / "more_unknown")
    assert meta["extra_sources"][0]["unknown_percentage"] == 150
    y, _, files = _load(tmp_path / "more_unknown", TRAIN)
    synth = np.asarray([speaker_of(f).startswith("synth") for f in files])
    copies = 1 + int(cfg.prepare.augment.copies)
    assert int(np.sum(synth & (y == unknown))) == 3 * 20 * copies
    assert sorted(f for f, k, s in zip(files, y, synth) if k == unknown and not s) == real_unknown
    for split in (VALIDATION, TEST):
        assert _load(tmp_path / "more_unknown", split)[2] == _load(tmp_path / "plain", split)[2]
    bad = _params(tmp_path, pool, "data.extra=[{name: tones, source: '%s', unknown_percentage: lots}]" % extra_src)
    with pytest.raises(ConfigError, match="unknown_percentage must be a number"):
        prepare(load_params(bad), Path(cfg.paths.dataset), tmp_path / "bad")

    # an entry's own copies: none of its examples copied; the real examples keep theirs
    params = _params(tmp_path, pool, "data.extra=[{name: tones, source: '%s', weight: 0.25, "
                                     "unknown_percentage: 150, copies: 0}]" % extra_src)
    cfg = load_params(params)
    meta = prepare(cfg, Path(cfg.paths.dataset), tmp_path / "no_copies")
    assert meta["extra_sources"][0]["copies"] == 0
    y, _, files = _load(tmp_path / "no_copies", TRAIN)
    synth = np.asarray([speaker_of(f).startswith("synth") for f in files])
    assert int(np.sum(synth)) == 2 * 20 + 3 * 20  # its 40 keyword and 60 unknown clips, each once
    assert sorted(f for f, s in zip(files, synth) if not s) == sorted(f for f in _load(tmp_path / "more_unknown", TRAIN)[2]
                                                                  if not speaker_of(f).startswith("synth"))
    bad = _params(tmp_path, pool, "data.extra=[{name: tones, source: '%s', copies: 1.5}]" % extra_src)
    with pytest.raises(ConfigError, match="copies must be a whole number"):
        prepare(load_params(bad), Path(cfg.paths.dataset), tmp_path / "bad")

    # dropped from the config: the download stage removes it
    download(_params(tmp_path, pool), progress=False)
    assert not list((tmp_path / "raw" / "extra").iterdir())


def test_the_pools_default_extra_source_is_weighted_synthetic_speech(tmp_path, pool):
    """data=speech_commands_real trains with espeak-ng speech as a weighted extra source, its unknown
    words at 100 % of its keywords (the served recipe): generated by the download stage — here
    with 8 voices instead of 24 — and used for training only."""
    from omegaconf import OmegaConf

    from kws.config import load_params

    default = OmegaConf.to_container(compose(["data=speech_commands_real"]).data.extra, resolve=True)
    assert [(e["name"], e["source"], e["weight"], e["unknown_percentage"]) for e in default] \
        == [("synthetic", "synthetic", 1.0, 100.0)]
    entry = default[0]
    assert (Path(__file__).resolve().parents[1] / entry["synthetic"]["noise_dir"]).is_dir()  # repo-relative (dvc repro)
    entry["synthetic"].update(voices=8, noise_dir=str(NOISE))
    params = _params(tmp_path, pool)
    cfg = load_params(params)
    cfg.data.extra = [entry]
    write_params(cfg, params)
    info = download(params, progress=False)
    assert info["extra"]["synthetic"]["n_words"] == 35

    meta = prepare(load_params(params), Path(cfg.paths.dataset), tmp_path / "features")
    y, w, files = _load(tmp_path / "features", TRAIN)
    voices = {speaker_of(f) for f in (tmp_path / "raw" / "extra" / "synthetic").rglob("*.wav")}  # its speakers
    synth, unknown = np.asarray([speaker_of(f) in voices for f in files]), meta["labels"].index(UNKNOWN)
    n_keywords = int(np.sum(synth & (y != unknown)))
    assert n_keywords == 10 * 8 * 3 * (1 + cfg.prepare.augment.copies)  # 10 keywords x 8 voices x 3 takes
    assert int(np.sum(synth & (y == unknown))) == n_keywords  # 100 % of its keywords (of its 25 x 8 x 3 unknown clips)
    assert np.all(w == 1.0)  # weighted like a real clip
