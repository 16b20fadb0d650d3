"""A full-size stand-in of ``speech_commands_v0.02.tar.gz`` (and of its canonical test set), built
offline from the real clips in ``../shared/data``.

The official archive (2,428,923,189 bytes) cannot be reached from these machines. This script
writes an archive of the same layout, counts and size class, so that the pipeline's download,
prepare, train and evaluate stages can be measured at full scale:

* 35 word folders with **v0.02's published per-word clip counts** (:data:`WORD_COUNTS`, the
  table of Warden 2018, arXiv:1804.03209, and of TensorFlow Datasets: 105,829 clips in all) from
  2,618 new speakers (v0.02 has 2,618 speakers); file names ``<word>/<8 hex>_nohash_<n>.wav``,
  16 kHz mono 16-bit PCM, 1 s;
* ``validation_list.txt`` / ``testing_list.txt`` by the dataset's hash-of-speaker rule at 10 % /
  10 % (:func:`kws.splits.split_by_hash`, the rule of the README of the real archive);
* ``_background_noise_/``: the six real noise recordings; ``LICENSE``; ``README.md``.

Every clip is made from a real clip OF THE SAME WORD in ``../shared/data/speech_commands_real``
(3,360 clips; the 25 non-keywords have only 3–23 clips each there, so they are reused many times):
pitch shift (librosa's phase vocoder), speed change (resampling; :mod:`fullsize_render`), gain and added noise (a cut of a
background recording plus a low noise floor), seeded per clip. Each new speaker has its own
voice (a pitch, speed and gain offset) around which its clips vary. These are perturbed copies
of 172 real speakers, not new speakers acoustically: the archive is for size and throughput
figures, not for accuracy.

Also ``speech_commands_test_set_v0.02.tar.gz``: the canonical test set's ``<class>/`` layout, 12
classes (10 keywords, ``_unknown_`` from the other 25 words, ``_silence_`` from the 280 real
silence clips), 4,890 clips, from 250 other new speakers (all in the hash rule's testing bucket,
like the real set's).

The tar stream is built and gzip-compressed in parallel (one gzip member per chunk of clips,
concatenated: a valid .tar.gz, as pigz writes); ``manifest.json`` beside the tarballs records
their sizes, sha256 and counts.

    .venv/bin/python benchmarks/make_fullsize_archive.py                # full size -> /tmp/kws-scale/archive-1
    .venv/bin/python benchmarks/make_fullsize_archive.py --scale 0.02   # a quick trial -> /tmp/kws-scale/archive-0.02
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import paths  # noqa: E402
from fullsize_render import build_chunk, gzip_member, init_worker, tar_dir, tar_member  # noqa: E402

POOL_DIR = paths.REAL_DIR
SILENCE_DIR = paths.REAL_SILENCE_DIR
NOISE_DIR = paths.SAMPLE_DIR / "_background_noise_"

ARCHIVE_NAME = "speech_commands_v0.02.tar.gz"
CANONICAL_NAME = "speech_commands_test_set_v0.02.tar.gz"
REAL_ARCHIVE_BYTES = 2_428_923_189  # conf/data/speech_commands.yaml
REAL_CANONICAL_BYTES = 112_563_277

#: v0.02's published clip counts per word (Warden 2018, Table; TensorFlow Datasets): 105,829 in all.
WORD_COUNTS = {
    "yes": 4044, "no": 3941, "up": 3723, "down": 3917, "left": 3801, "right": 3778, "on": 3845, "off": 3745,
    "stop": 3872, "go": 3880,
    "zero": 4052, "one": 3890, "two": 3880, "three": 3727, "four": 3728, "five": 4052, "six": 3860,
    "seven": 3998, "eight": 3787, "nine": 3934,
    "bed": 2014, "bird": 2064, "cat": 2031, "dog": 2128, "happy": 2054, "house": 2113, "marvin": 2100,
    "sheila": 2022, "tree": 1759, "wow": 2123,
    "backward": 1664, "forward": 1557, "follow": 1579, "learn": 1575, "visual": 1592,
}
TOTAL_CLIPS = 105_829
SPEAKERS = 2_618
assert len(WORD_COUNTS) == 35 and sum(WORD_COUNTS.values()) == TOTAL_CLIPS, sum(WORD_COUNTS.values())

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
#: The canonical test set: 4,890 clips, 408 each of ``_unknown_`` and ``_silence_``; the split of the
#: other 4,074 over the ten keywords here is close to the real set's (~400 each).
CANONICAL_COUNTS = {"yes": 419, "no": 405, "up": 425, "down": 406, "left": 412, "right": 396, "on": 396,
                    "off": 402, "stop": 411, "go": 402, "_unknown_": 408, "_silence_": 408}
CANONICAL_SPEAKERS = 250
assert sum(CANONICAL_COUNTS.values()) == 4_890

CHUNK = 256  # clips per worker task (one gzip member)
RECORD = 20 * 512  # tar record size

LICENSE_TEXT = """\
This is a generated STAND-IN for the Speech Commands dataset v0.02, made by kws's
benchmarks/make_fullsize_archive.py from real clips of that dataset.

Speech Commands is by Pete Warden (Google) and is licensed under the Creative Commons
Attribution 4.0 International license (CC BY 4.0):
https://creativecommons.org/licenses/by/4.0/legalcode

Citation: Warden P., "Speech Commands: A Dataset for Limited-Vocabulary Speech Recognition",
arXiv:1804.03209, 2018. The clips here are perturbed copies (pitch, speed, gain, added noise)
of clips of that dataset; the same license applies.
"""

NOISE_README = """\
The six background-noise recordings of Speech Commands v0.02 (16 kHz mono): doing_the_dishes,
dude_miaowing, exercise_bike, pink_noise, running_tap, white_noise. Use them to mix noise into
clips and to cut one-second `_silence_` examples.
"""


# --------------------------------------------------------------------------- planning
def _speaker_ids(rng: np.random.Generator, n: int, taken: set[str], want_test_bucket: bool = False) -> list[str]:
    from kws.splits import TEST, split_by_hash

    out: list[str] = []
    while len(out) < n:
        sid = f"{int(rng.integers(0, 2**32)):08x}"
        if sid in taken:
            continue
        if want_test_bucket and split_by_hash(f"{sid}_nohash_0.wav", 10.0, 10.0) != TEST:
            continue
        taken.add(sid)
        out.append(sid)
    return out


def _voices(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-speaker voice: pitch (semitones), speed, gain (dB), noise level; and how much each speaks."""
    return {
        "pitch": np.clip(rng.normal(0.0, 1.2, n), -3.0, 3.0),
        "speed": rng.uniform(0.9, 1.1, n),
        "gain_db": rng.uniform(-10.0, 3.0, n),
        "noise_db": rng.uniform(-80.0, -56.0, n),  # background-noise cut level (dBFS rms)
        "activity": rng.lognormal(0.0, 0.8, n),
    }


def _clip_spec(rng, voice: dict, s: int, source: str, name: str, kind: str, n_noise: int, seed: int) -> dict:
    return {
        "name": name, "source": source, "kind": kind, "seed": seed,
        "pitch": float(voice["pitch"][s] + rng.normal(0.0, 0.3)),
        "speed": float(voice["speed"][s] * rng.uniform(0.97, 1.03)),
        "gain_db": float(voice["gain_db"][s] + rng.uniform(-2.0, 2.0)),
        "noise": int(rng.integers(0, n_noise)),
        "noise_rms": float(10 ** ((voice["noise_db"][s] + rng.uniform(-3.0, 3.0)) / 20)),
        "floor_rms": float(10 ** (rng.uniform(-90.0, -74.0) / 20)),
    }


def _pool() -> dict[str, list[str]]:
    pool = {w: sorted(str(p) for p in (POOL_DIR / w).glob("*.wav")) for w in WORD_COUNTS}
    missing = [w for w, v in pool.items() if not v]
    if missing:
        raise SystemExit(f"no real clips for {missing} in {POOL_DIR}")
    return pool


def plan_archive(scale: float, seed: int, n_noise: int) -> tuple[list[dict], dict]:
    """The clips of the archive (name, source, perturbation), in word order, and the counts."""
    rng = np.random.default_rng([seed, 1])
    pool = _pool()
    counts = {w: max(1, round(c * scale)) for w, c in WORD_COUNTS.items()}
    total = sum(counts.values())
    n_speakers = min(total, max(10, round(SPEAKERS * scale)))
    speakers = _speaker_ids(rng, n_speakers, set())
    voice = _voices(rng, n_speakers)
    # every speaker says at least one word; the rest of the clips go to speakers by their activity
    slots = rng.permutation(np.repeat(np.arange(len(counts)), list(counts.values())))
    who = np.empty(total, int)
    who[:n_speakers] = rng.permutation(n_speakers)
    p = voice["activity"] / voice["activity"].sum()
    who[n_speakers:] = rng.choice(n_speakers, size=total - n_speakers, p=p)
    words = list(counts)
    takes: dict[tuple[int, int], int] = {}
    specs = []
    for k in np.lexsort((who, slots)):  # word order, then speaker
        w, s = int(slots[k]), int(who[k])
        n = takes.get((w, s), 0)
        takes[(w, s)] = n + 1
        word = words[w]
        src = pool[word][int(rng.integers(0, len(pool[word])))]
        specs.append(_clip_spec(rng, voice, s, src, f"./{word}/{speakers[s]}_nohash_{n}.wav", "word", n_noise,
                                seed * 1_000_003 + len(specs)))
    return specs, {"clips_per_word": counts, "clips": total, "speakers": n_speakers,
                   "speaker_ids": set(speakers)}


def plan_canonical(scale: float, seed: int, n_noise: int, taken: set[str]) -> tuple[list[dict], dict]:
    rng = np.random.default_rng([seed, 2])
    pool = _pool()
    others = [w for w in WORD_COUNTS if w not in KEYWORDS]
    silences = sorted(str(p) for p in SILENCE_DIR.glob("*.wav"))
    counts = {c: max(1, round(n * scale)) for c, n in CANONICAL_COUNTS.items()}
    n_speakers = max(10, round(CANONICAL_SPEAKERS * scale))
    speakers = _speaker_ids(rng, n_speakers, set(taken), want_test_bucket=True)
    voice = _voices(rng, n_speakers)
    p = voice["activity"] / voice["activity"].sum()
    specs, takes = [], {}
    for cls, n in counts.items():
        for i in range(n):
            s = int(rng.choice(n_speakers, p=p))
            if cls == "_silence_":
                src = silences[int(rng.integers(0, len(silences)))]
                name, kind = f"./_silence_/silence_{i:04d}.wav", "silence"
            else:
                word = cls if cls != "_unknown_" else others[int(rng.integers(0, len(others)))]
                src = pool[word][int(rng.integers(0, len(pool[word])))]
                t = takes.get((cls, word, s), 0)
                takes[(cls, word, s)] = t + 1
                prefix = f"{word}_" if cls == "_unknown_" else ""
                name, kind = f"./{cls}/{prefix}{speakers[s]}_nohash_{t}.wav", "word"
            specs.append(_clip_spec(rng, voice, s, src, name, kind, n_noise, seed * 1_000_003 + 500_000_000 + len(specs)))
    return specs, {"clips_per_class": counts, "clips": len(specs), "speakers": n_speakers}


# --------------------------------------------------------------------------- writing
class _Out:
    """A .tar.gz written as a sequence of gzip members, hashed on the way."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.fh = open(self.tmp, "wb")
        self.sha = hashlib.sha256()
        self.tar_bytes = 0

    def member(self, gz: bytes, tar_bytes: int) -> None:
        self.fh.write(gz)
        self.sha.update(gz)
        self.tar_bytes += tar_bytes

    def raw(self, tar: bytes) -> None:
        self.member(gzip_member(tar), len(tar))

    def close(self) -> tuple[int, str]:
        end = b"\0" * 1024
        end += b"\0" * ((-(self.tar_bytes + len(end))) % RECORD)
        self.raw(end)
        self.fh.close()
        os.replace(self.tmp, self.path)
        return self.path.stat().st_size, self.sha.hexdigest()


def write_tarball(path: Path, head: bytes, specs: list[dict], workers: int, noise_files: list[str], desc: str) -> dict:
    from tqdm import tqdm

    t0 = time.perf_counter()
    out = _Out(path)
    out.raw(head)
    chunks = [specs[i:i + CHUNK] for i in range(0, len(specs), CHUNK)]
    with Pool(workers, initializer=init_worker, initargs=(noise_files,)) as pool, \
            tqdm(total=len(specs), desc=desc, unit="clip", smoothing=0.05) as bar:
        for gz, tar_bytes, n in pool.imap(build_chunk, chunks):
            out.member(gz, tar_bytes)
            bar.update(n)
    size, sha = out.close()
    seconds = time.perf_counter() - t0
    print(f"{path}: {size:,} bytes ({size / 2**30:.2f} GiB), {len(specs):,} clips in {seconds:.0f} s "
          f"({len(specs) / seconds:.0f} clips/s); tar stream {out.tar_bytes:,} bytes\nsha256 {sha}", flush=True)
    return {"path": str(path), "bytes": size, "sha256": sha, "tar_bytes": out.tar_bytes, "seconds": round(seconds, 1)}


def archive_head(specs: list[dict], noise_files: list[str], scale: float) -> bytes:
    from kws.splits import TEST, VALIDATION, split_by_hash

    names = [s["name"][2:] for s in specs]
    split = {n: split_by_hash(n, 10.0, 10.0) for n in names}
    validation = "".join(f"{n}\n" for n in sorted(names) if split[n] == VALIDATION)
    testing = "".join(f"{n}\n" for n in sorted(names) if split[n] == TEST)
    readme = (f"# Speech Commands v0.02 STAND-IN (kws benchmarks, scale {scale:g})\n\n"
              f"{len(names):,} one-second clips of 35 words in the official layout, generated from real clips of "
              "the dataset (perturbed copies: pitch, speed, gain, noise) by benchmarks/make_fullsize_archive.py. "
              "validation_list.txt / testing_list.txt follow the dataset's hash-of-speaker rule (10 % / 10 %). "
              "For size and throughput measurements only; not for accuracy.\n")
    parts = [tar_dir("./"), tar_member("./LICENSE", LICENSE_TEXT.encode()), tar_member("./README.md", readme.encode()),
             tar_member("./validation_list.txt", validation.encode()), tar_member("./testing_list.txt", testing.encode()),
             tar_dir("./_background_noise_/"),
             tar_member("./_background_noise_/README.md", NOISE_README.encode())]
    for f in noise_files:
        parts.append(tar_member(f"./_background_noise_/{Path(f).name}", Path(f).read_bytes()))
    for word in WORD_COUNTS:
        parts.append(tar_dir(f"./{word}/"))
    return b"".join(parts)


def canonical_head() -> bytes:
    return b"".join([tar_dir("./")] + [tar_dir(f"./{c}/") for c in CANONICAL_COUNTS])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default /tmp/kws-scale/archive-<scale>, where bench_scale.py looks)")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = full size; e.g. 0.02 for a quick trial")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-canonical", action="store_true")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 1.0:
        parser.error("--scale must be in (0, 1]")
    args.out = args.out or Path(f"/tmp/kws-scale/archive-{args.scale:g}")
    for folder in (POOL_DIR, SILENCE_DIR, NOISE_DIR):
        if not folder.is_dir():
            raise SystemExit(f"{folder} not found: the real clips in ../shared/data are needed")
    args.out.mkdir(parents=True, exist_ok=True)
    noise_files = sorted(str(p) for p in NOISE_DIR.glob("*.wav"))
    started = time.perf_counter()

    specs, info = plan_archive(args.scale, args.seed, len(noise_files))
    taken = info.pop("speaker_ids")
    print(f"archive: {info['clips']:,} clips of {len(info['clips_per_word'])} words, {info['speakers']:,} speakers "
          f"(scale {args.scale:g}, {args.workers} workers)", flush=True)
    head = archive_head(specs, noise_files, args.scale)
    archive = write_tarball(args.out / ARCHIVE_NAME, head, specs, args.workers, noise_files, "archive")
    from kws.splits import TEST, VALIDATION, split_by_hash

    split_counts = {VALIDATION: 0, TEST: 0}
    for s in specs:
        k = split_by_hash(s["name"][2:], 10.0, 10.0)
        if k in split_counts:
            split_counts[k] += 1
    manifest = {
        "scale": args.scale, "seed": args.seed, "workers": args.workers,
        "archive": {**archive, **info, "validation_list": split_counts[VALIDATION], "testing_list": split_counts[TEST],
                    "real_archive_bytes": REAL_ARCHIVE_BYTES, "noise_files": [Path(f).name for f in noise_files]},
    }
    if not args.skip_canonical:
        cspecs, cinfo = plan_canonical(args.scale, args.seed, len(noise_files), taken)
        print(f"canonical test set: {cinfo['clips']:,} clips of 12 classes, {cinfo['speakers']} speakers", flush=True)
        canonical = write_tarball(args.out / CANONICAL_NAME, canonical_head(), cspecs, args.workers, noise_files,
                                  "canonical")
        manifest["canonical"] = {**canonical, **cinfo, "real_canonical_bytes": REAL_CANONICAL_BYTES}
    manifest["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {args.out / 'manifest.json'} ({manifest['seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
