"""The prepare stage on a small dataset in the Speech Commands layout built from real clips."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kws.config import compose, write_params
from kws.errors import DatasetError
from kws.features import FeatureConfig, clip_features, extract, mfcc
from kws.labels import SILENCE, UNKNOWN
from kws.splits import speaker_of, split_by_hash
from kws.stages.prepare import prepare

from tests.support.processes import wait_for

KEYWORDS = ("yes", "no", "up")


def _tone(freq: float, seed: int, n: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture
def dataset(tmp_path, sample_dir) -> Path:
    """Keyword folders of generated tones (8 speakers each) + the real digit clips as unknown words."""
    root = tmp_path / "speech_commands"
    for k, word in enumerate(KEYWORDS):
        (root / word).mkdir(parents=True)
        for s in range(8):
            for take in range(2):
                sf.write(root / word / f"spk{s:05d}_nohash_{take}.wav", _tone(300 + 200 * k + 10 * s, s * 10 + take), 16000,
                         subtype="PCM_16")
    for clip in sample_dir.glob("*/*.wav"):
        if clip.parent.name.startswith("_"):
            continue
        (root / clip.parent.name).mkdir(exist_ok=True)
        shutil.copy(clip, root / clip.parent.name / clip.name)
    (root / "_background_noise_").mkdir()
    for noise in (sample_dir / "_background_noise_").glob("*.wav"):
        (root / "_background_noise_" / noise.name).symlink_to(noise)
    val = [f"{w}/spk00001_nohash_{t}.wav" for w in KEYWORDS for t in range(2)]
    test = [f"{w}/spk00002_nohash_{t}.wav" for w in KEYWORDS for t in range(2)]
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root


def _cfg(*overrides: str):
    return compose([
        "prepare.augment.copies=1", "prepare.workers=2", "prepare.batch_size=16",
        "prepare.unknown_percentage=25", "prepare.silence_percentage=20", *overrides,
    ])


def _load(out: Path, split: str):
    with np.load(out / f"{split}.npz") as d:
        return d["x"], d["y"], d["files"]


def test_lists_respected_and_speakers_never_cross(dataset, tmp_path):
    out = tmp_path / "features"
    meta = prepare(_cfg(), dataset, out)
    assert meta["split_method"] == "lists"
    speakers = {}
    for split in ("train", "validation", "test"):
        _, _, files = _load(out, split)
        speakers[split] = {speaker_of(f) for f in files if f != SILENCE}
    assert {"spk00001"} <= speakers["validation"] and "spk00001" not in speakers["train"] | speakers["test"]
    assert {"spk00002"} <= speakers["test"] and "spk00002" not in speakers["train"]
    assert not speakers["train"] & speakers["validation"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["validation"] & speakers["test"]
    _, _, val_files = _load(out, "validation")
    listed = set((dataset / "validation_list.txt").read_text().split())
    assert listed <= set(val_files.tolist())


def test_hash_rule_when_lists_are_missing(dataset, tmp_path):
    (dataset / "validation_list.txt").unlink()
    (dataset / "testing_list.txt").unlink()
    out = tmp_path / "features"
    meta = prepare(_cfg("prepare.validation_percentage=30", "prepare.testing_percentage=30"), dataset, out)
    assert meta["split_method"] == "hash"
    seen = {}
    for split in ("train", "validation", "test"):
        for f in _load(out, split)[2]:
            if f == SILENCE:
                continue
            assert split_by_hash(f, 30, 30) == split
            assert seen.setdefault(speaker_of(f), split) == split


def test_class_proportions_shapes_and_dtypes(dataset, tmp_path):
    out = tmp_path / "features"
    cfg = _cfg("prepare.augment.copies=0")
    meta = prepare(cfg, dataset, out)
    labels = meta["labels"]
    assert labels[:2] == [SILENCE, UNKNOWN] and len(labels) == 12
    shape = FeatureConfig.from_dict(cfg.features).shape
    for split in ("train", "validation", "test"):
        x, y, files = _load(out, split)
        assert x.dtype == np.float32 and x.shape[1:] == shape and np.isfinite(x).all()
        assert y.dtype == np.int16 and len(y) == len(x) == len(files)
        counts = np.bincount(y, minlength=len(labels))
        base = sum(counts[labels.index(w)] for w in KEYWORDS)
        assert counts[labels.index(SILENCE)] == math.ceil(base * 0.20)
        pool = sum(1 for f in files if f.split("/")[0] not in KEYWORDS and f != SILENCE)
        assert counts[labels.index(UNKNOWN)] == pool <= math.ceil(base * 0.25)
        assert meta["counts"][split] == len(y)


def test_augmented_copies_only_in_train(dataset, tmp_path):
    plain = prepare(_cfg("prepare.augment.copies=0"), dataset, tmp_path / "a")
    aug = prepare(_cfg("prepare.augment.copies=2"), dataset, tmp_path / "b")
    assert aug["counts"]["train"] == 3 * plain["counts"]["train"]
    assert aug["counts"]["validation"] == plain["counts"]["validation"]
    assert aug["counts"]["test"] == plain["counts"]["test"]


def test_identical_audio_gives_identical_features(dataset, tmp_path):
    clip = dataset / "yes" / "spk00001_nohash_0.wav"
    shutil.copy(clip, dataset / "yes" / "spk00001_nohash_7.wav")
    with open(dataset / "validation_list.txt", "a") as f:
        f.write("yes/spk00001_nohash_7.wav\n")
    out = tmp_path / "features"
    cfg = _cfg()
    prepare(cfg, dataset, out)
    x, _, files = _load(out, "validation")
    files = files.tolist()
    a = x[files.index("yes/spk00001_nohash_0.wav")]
    b = x[files.index("yes/spk00001_nohash_7.wav")]
    np.testing.assert_array_equal(a, b)
    # ... and equal to what the service computes for that file (same module, one clip at a time).
    wave, _ = sf.read(clip, dtype="float32")
    np.testing.assert_allclose(a, clip_features(wave, FeatureConfig.from_dict(cfg.features)), rtol=1e-5, atol=1e-3)


def test_batched_and_single_mfcc_agree():
    cfg = FeatureConfig()
    waves = np.stack([_tone(440, 1), _tone(880, 2) * 0.01, np.zeros(16000, np.float32)])
    batch = mfcc(waves, cfg)
    for i in range(3):
        np.testing.assert_allclose(batch[i], mfcc(waves[i], cfg), rtol=1e-5, atol=1e-3)


def test_logmel_front_end_is_the_log_mel_under_the_mfccs():
    """``kind: logmel`` gives the n_mels log-mel energies the MFCCs are the DCT of."""
    import scipy.fft

    wave = _tone(440, 3)
    mel = extract(wave, FeatureConfig(kind="logmel"))
    coeffs = mfcc(wave, FeatureConfig(kind="mfcc"))
    assert mel.shape == FeatureConfig(kind="logmel").shape == (49, 40) and coeffs.shape == (49, 13)
    np.testing.assert_allclose(scipy.fft.dct(mel, type=2, norm="ortho", axis=-1)[:, :13], coeffs, rtol=1e-4, atol=1e-2)
    with pytest.raises(Exception, match="unknown feature kind"):
        FeatureConfig.from_dict({"kind": "cqt"})


def test_unreadable_clip_is_skipped_and_reported(dataset, tmp_path):
    (dataset / "yes" / "spk00005_nohash_0.wav").write_bytes(b"RIFF\x00\x00not really a wave file")
    meta = prepare(_cfg(), dataset, tmp_path / "features")
    assert any("spk00005_nohash_0.wav" in s for s in meta["skipped"])
    saved = json.loads((tmp_path / "features" / "meta.json").read_text())
    assert saved["skipped"] == meta["skipped"]


def test_empty_dataset_is_a_clear_error_and_leaves_nothing(tmp_path):
    empty = tmp_path / "speech_commands"
    empty.mkdir()
    out = tmp_path / "features"
    with pytest.raises(DatasetError, match="no clips found"):
        prepare(_cfg(), empty, out)
    assert not out.exists() and not list(tmp_path.glob(".features*"))


def test_stage_cli_reports_missing_dataset_without_traceback(tmp_path, repo):
    write_params(compose([f"paths.dataset={tmp_path}/nowhere", f"paths.features={tmp_path}/features"]),
                 tmp_path / "params.yaml")
    proc = subprocess.run([sys.executable, "-m", "kws.stages.prepare"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "does not exist: run the download stage first" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_interrupted_prepare_stops_its_workers_and_keeps_the_old_features(dataset, tmp_path, signame):
    """`kill` (SIGTERM) or Ctrl-C mid-featurization: the queued chunks are cancelled, both pool
    workers exit, the temp dir is removed and the previous features stay byte for byte."""
    import os
    import signal
    import time

    import psutil

    out = tmp_path / "features"
    prepare(_cfg(), dataset, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # ~105,000 examples: most of a minute of work for 2 idle workers (more on a loaded machine),
    # interrupted after the first chunks; stopping takes a fraction of that (a few seconds idle)
    write_params(_cfg("prepare.augment.copies=2000", "prepare.batch_size=64", f"paths.dataset={dataset}",
                      f"paths.features={out}"), tmp_path / "params.yaml")
    with open(tmp_path / "stderr.txt", "w") as err:
        # SIGINT as in a terminal: a shell's background job (`nohup … &`, some CI runners) starts
        # with SIGINT ignored, and the stage would inherit that
        proc = subprocess.Popen([sys.executable, "-m", "kws.stages.prepare"], cwd=tmp_path, stderr=err,
                                stdout=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(lambda: "train:" in (tmp_path / "stderr.txt").read_text(), 120, "featurization", proc)
        # mid-work: both pool workers up, writing into a temp dir beside the output
        wait_for(lambda: len(psutil.Process(proc.pid).children(recursive=True)) >= 2
                 and any(tmp_path.glob(".features.tmp-*")), 60, "the pool workers and the temp dir", proc)
        workers = psutil.Process(proc.pid).children(recursive=True)
        started = time.monotonic()
        if signame == "SIGTERM":
            proc.send_signal(signal.SIGTERM)  # the stage process only, as `kill` does
        else:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
        rc = proc.wait(timeout=60)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert rc == (143 if signame == "SIGTERM" else 130), stderr[-3000:]
    assert took < 20, f"took {took:.1f} s to stop: the queued chunks were not cancelled"
    assert "Traceback" not in stderr and "outputs unchanged" in stderr, stderr[-3000:]
    _, gone_alive = psutil.wait_procs(workers, timeout=10)
    assert not gone_alive, f"pool workers left running: {gone_alive}"
    assert not list(tmp_path.glob(".features.tmp-*"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_temp_dir_left_by_a_killed_run_is_removed_by_the_next_one(dataset, tmp_path):
    """SIGKILL cannot be caught: the temp dir (named with its writer's pid) stays until the next run,
    which removes it — but never the temp dir of a writer that is still alive."""
    import os

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".features.tmp-{int(dead.stdout)}-abcd1234"
    live = tmp_path / f".features.tmp-{os.getpid()}-live0000"
    for d in (stale, live):
        d.mkdir()
        (d / "train.npz").write_bytes(b"half written")
    prepare(_cfg(), dataset, tmp_path / "features")
    assert not stale.exists() and live.is_dir()
    assert (tmp_path / "features" / "meta.json").is_file()


def test_a_process_with_tensorflow_featurizes_through_forkserver_workers(dataset, tmp_path):
    """Forking a process that runs TensorFlow is unsafe (after in-process training the forked pool
    workers died: BrokenProcessPool); the stage command, which never loads it, still forks, a
    process with TensorFlow gets forkserver workers — and the same features either way."""
    import tensorflow as tf  # noqa: F401  (this process: TensorFlow loaded, its thread pools started)

    from kws.workers import start_method

    probe = "import sys, kws.stages.prepare, kws.synthetic; from kws.workers import start_method; " \
            "print(start_method(), 'tensorflow' in sys.modules)"
    fresh = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert fresh.stdout.split() == ["fork", "False"]
    write_params(_cfg(f"paths.dataset={dataset}", f"paths.features={tmp_path / 'forked'}"), tmp_path / "params.yaml")
    subprocess.run([sys.executable, "-m", "kws.stages.prepare"], cwd=tmp_path, capture_output=True, check=True)

    tf.constant([1.0]) + 1.0  # an op run: the intra/inter-op thread pools exist
    assert start_method() == "forkserver"
    prepare(_cfg(), dataset, tmp_path / "forkserver")
    for split in ("train", "validation", "test"):
        x_fork, y_fork, files_fork = _load(tmp_path / "forked", split)
        x, y, files = _load(tmp_path / "forkserver", split)
        assert list(files) == list(files_fork) and np.array_equal(y, y_fork)
        np.testing.assert_array_equal(x, x_fork)
