"""The offline synthetic stand-in (espeak-ng) has Speech Commands' exact layout and is reproducible."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kws.errors import ConfigError, DatasetError
from kws.labels import BACKGROUND_NOISE_DIR
from kws.splits import assign_splits, speaker_of
from tests.support.paths import SAMPLE_DIR

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

WORDS = ("yes", "no", "marvin", "seven")
TINY = dict(
    seed=7, voices=3, takes_per_voice=1, snr_db=[15.0, 25.0], validation_voices=1, testing_voices=1,
    words=WORDS, progress=False,
)
# The real Speech Commands noise recordings, read in place (see conftest.py).
REAL_NOISE = SAMPLE_DIR / BACKGROUND_NOISE_DIR


def _generate(dest: Path, **overrides):
    from kws.synthetic import generate

    kwargs = {**TINY, "noise_dir": REAL_NOISE, "workers": 1, **overrides}
    return generate(dest, **kwargs)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("synth") / "speech_commands"
    return dest, _generate(dest)


def test_layout_matches_speech_commands(tiny):
    root, summary = tiny
    word_dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert word_dirs == sorted(WORDS)
    assert (root / BACKGROUND_NOISE_DIR).is_dir()
    assert (root / "validation_list.txt").is_file() and (root / "testing_list.txt").is_file()
    readme = (root / "README.md").read_text()
    assert "SYNTHETIC" in readme and "espeak-ng" in readme and "NOT Google Speech Commands" in readme

    clips = sorted(root.glob("*/*_nohash_*.wav"))
    assert len(clips) == len(WORDS) * 3 * 1 == summary["clips"]
    speakers = set()
    for clip in clips:
        info = sf.info(str(clip))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 16000)
        speaker, take = clip.stem.split("_nohash_")
        assert len(speaker) == 8 and int(speaker, 16) >= 0 and take == "0"
        speakers.add(speaker)
    assert len(speakers) == 3

    for noise in (root / BACKGROUND_NOISE_DIR).glob("*.wav"):
        info = sf.info(str(noise))
        assert (info.samplerate, info.channels) == (16000, 1) and info.frames >= 16000
    assert summary["name"] == "synthetic_speech_commands" and summary["synthetic"] is True
    assert (summary["speakers"], summary["words"], summary["seed"]) == (3, len(WORDS), 7)
    assert summary["validation_clips"] == summary["testing_clips"] == len(WORDS)


def test_real_noise_is_copied_when_available(tiny):
    root, summary = tiny
    if not REAL_NOISE.is_dir():
        pytest.skip("real background noise sample not available")
    originals = sorted(p.name for p in REAL_NOISE.glob("*.wav"))
    assert summary["noise_files"] == originals
    for name in originals:
        assert (root / BACKGROUND_NOISE_DIR / name).read_bytes() == (REAL_NOISE / name).read_bytes()


def test_split_lists_reference_files_and_never_share_a_speaker(tiny):
    root, _ = tiny
    lists = {name: (root / f"{name}_list.txt").read_text().splitlines() for name in ("validation", "testing")}
    spk = {}
    for name, rels in lists.items():
        assert rels and all((root / rel).is_file() for rel in rels)
        spk[name] = {speaker_of(rel) for rel in rels}
        assert len(spk[name]) == 1
        # every clip of a listed speaker is listed
        assert len(rels) == len(WORDS)
    assert not spk["validation"] & spk["testing"]

    rel_paths = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.wav") if not p.parent.name.startswith("_"))
    splits, method = assign_splits(root, rel_paths, 10, 10)
    assert method == "lists"
    by_speaker: dict[str, set[str]] = {}
    for rel, split in splits.items():
        by_speaker.setdefault(speaker_of(rel), set()).add(split)
    assert all(len(s) == 1 for s in by_speaker.values())
    assert sorted(next(iter(s)) for s in by_speaker.values()) == ["test", "train", "validation"]


def test_clips_are_speech_not_silence_and_differ_by_word(tiny):
    root, _ = tiny
    speaker = next(iter((root / "yes").glob("*.wav"))).name
    clips = {w: sf.read(str(root / w / speaker), dtype="float32")[0] for w in WORDS}
    for word, y in clips.items():
        frames = y[: len(y) // 400 * 400].reshape(-1, 400)  # 25 ms frames
        energy = np.sqrt(np.mean(frames**2, axis=1))
        assert energy.max() > 0.01, f"{word} is (nearly) silent"
        assert energy.max() > 3 * np.median(energy), f"{word} has no word standing out of the noise"
    for a in WORDS:
        for b in WORDS:
            if a < b:
                assert not np.array_equal(clips[a], clips[b])


def test_same_arguments_give_identical_bytes_in_parallel(tmp_path, tiny):
    root, _ = tiny
    other = tmp_path / "again"
    _generate(other, workers=2)  # other process count, same bytes
    assert _tree(other) == _tree(root)


def test_different_seed_gives_different_speakers(tmp_path):
    a = _generate(tmp_path / "a", noise_dir=None, words=("yes",), seed=1)
    b = _generate(tmp_path / "b", noise_dir=None, words=("yes",), seed=2)
    assert {v["hash"] for v in a["voices"]} != {v["hash"] for v in b["voices"]}


def test_noise_is_generated_when_noise_dir_is_missing(tmp_path, caplog):
    dest = tmp_path / "ds"
    with caplog.at_level(logging.WARNING, logger="kws.takes"):
        summary = _generate(dest, noise_dir=tmp_path / "does-not-exist", words=("go", "stop"))
    assert "generating white and pink noise" in caplog.text
    noise = sorted(p.name for p in (dest / BACKGROUND_NOISE_DIR).glob("*.wav"))
    assert noise == ["pink_noise.wav", "white_noise.wav"] == sorted(summary["noise_files"])
    for name in noise:
        y, sr = sf.read(str(dest / BACKGROUND_NOISE_DIR / name), dtype="float32")
        assert sr == 16000 and y.ndim == 1 and len(y) == 60 * 16000 and np.std(y) > 0.01
    assert len(list(dest.glob("*/*_nohash_*.wav"))) == 2 * 3


def test_missing_espeak_is_a_clear_dataset_error(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    dest = tmp_path / "ds"
    with pytest.raises(DatasetError, match=r"install espeak-ng \(apt-get install espeak-ng\)"):
        _generate(dest)
    assert not dest.exists()


def test_refuses_a_non_empty_destination(tmp_path):
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not an empty folder"):
        _generate(tmp_path)
    assert (tmp_path / "x.txt").read_text() == "keep me"


def test_cli(tmp_path, capsys):
    from kws.synthetic import main

    dest = tmp_path / "cli"
    common = ["--noise-dir", str(tmp_path / "none"), "--workers", "1", "--no-progress", "--words", "up", "down"]
    assert main([str(dest), "--voices", "3", "--takes", "2", "--seed", "5",
                 "--validation-voices", "1", "--testing-voices", "1", *common]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert len(list(dest.glob("*/*_nohash_*.wav"))) == 3 * 2 * 2
    # every speaker must not be held out: a one-line error and exit status 1
    assert main([str(tmp_path / "bad"), "--voices", "2", "--validation-voices", "1", "--testing-voices", "1",
                 *common]) == 1
    assert "smaller than voices" in capsys.readouterr().err


def test_both_data_options_use_the_one_settings_node(repo):
    """conf/synthetic/default.yaml is the only copy: data=synthetic's dataset and the real pool's
    extra source get exactly its values, one override reaches either, and the interpolation
    itself cannot be overridden (it would leave a partial node)."""
    from omegaconf import OmegaConf

    from kws.config import compose
    from kws.synthetic import load_settings

    conf = repo / "conf"
    settings = load_settings(conf)

    def node(cfg, path):
        return OmegaConf.to_container(OmegaConf.select(cfg, path), resolve=True)

    assert node(compose(["data=synthetic"], conf), "data.synthetic") == settings
    assert node(compose(["data=speech_commands_real"], conf), "data.extra.0.synthetic") == settings
    changed = {**settings, "voices": settings["voices"] + 1}
    override = f"synthetic.voices={changed['voices']}"
    assert node(compose(["data=synthetic", override], conf), "data.synthetic") == changed
    assert node(compose(["data=speech_commands_real", override], conf), "data.extra.0.synthetic") == changed
    with pytest.raises(ConfigError, match="data.synthetic.voices"):
        compose(["data=synthetic", "data.synthetic.voices=5"], conf)


def test_cli_defaults_come_from_the_conf_folder(tmp_path, capsys):
    from kws.synthetic import _parser, cli_settings, main

    conf = tmp_path / "conf"
    (conf / "synthetic").mkdir(parents=True)
    (conf / "synthetic" / "default.yaml").write_text(
        "seed: 9\nvoices: 5\ntakes_per_voice: 2\nnoise_dir: null\nsnr_db: [1.0, 2.0]\n"
        "validation_voices: 1\ntesting_voices: 1\n"
    )
    args = _parser().parse_args(["out", "--conf", str(conf), "--voices", "4", "--snr-db", "3", "4"])
    assert cli_settings(args) == {"seed": 9, "voices": 4, "takes_per_voice": 2, "noise_dir": None,
                                  "snr_db": [3.0, 4.0], "validation_voices": 1, "testing_voices": 1}
    # without the settings file: a one-line error and exit status 1, nothing generated
    dest = tmp_path / "ds"
    assert main([str(dest), "--conf", str(tmp_path / "elsewhere"), "--workers", "1", "--no-progress"]) == 1
    assert "synthetic/default.yaml not found" in capsys.readouterr().err
    assert not dest.exists()


def test_a_partial_settings_node_is_refused_before_generating(repo, tmp_path):
    """What ``++data.synthetic.voices=8`` leaves (the interpolation replaced by one key) fails with
    the fix named, and so does an unknown key, before anything is generated."""
    from kws.stages.download import synthesize_dataset
    from kws.synthetic import load_settings

    dest = tmp_path / "raw" / "speech_commands"
    with pytest.raises(ConfigError, match=r"missing \[.*'seed'.*\].*`synthetic.<key>=\.\.\.`"):
        synthesize_dataset(dest, {"voices": 8})
    with pytest.raises(ConfigError, match=r"missing \[\], unknown \['speed'\]"):
        synthesize_dataset(dest, {**load_settings(repo / "conf"), "speed": 2})
    assert not dest.exists() and not list(tmp_path.rglob("*.json"))


def test_failed_synthesis_is_retried_then_names_word_and_voice():
    from kws.speakers import Speaker, render_clip
    from kws.tts import find_espeak

    bad = Speaker(hash="0badc0de", voice="xx-no-such-voice", pitch=50, speed=160)
    with pytest.raises(DatasetError, match=r"'seven'.*'xx-no-such-voice'"):
        render_clip(find_espeak(), "seven", bad, 0, 1, [], (10.0, 20.0))
