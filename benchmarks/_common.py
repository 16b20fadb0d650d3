"""Shared helpers of the benchmarks: paths, the cached synthetic dataset, machine info (importing it
puts the repository root on ``sys.path``, for the harness in ``tests/support``)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import json
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The benchmarks share the tests' harness (tests/support: tiny bundles, nginx, server processes,
# pipeline copies); a script run as `python benchmarks/x.py` has only benchmarks/ on sys.path.
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

from tests.support import paths  # noqa: E402

CONF_DIR = REPO / "conf"
RESULTS_DIR = REPO / "benchmarks" / "results"
SAMPLE_DIR = paths.SAMPLE_DIR.resolve()
DEFAULT_CACHE = Path(os.environ.get("KWS_BENCH_CACHE", "/tmp/kws-bench"))
_DONE = ".bench-complete.json"

LIBRARIES = (
    "numpy", "scipy", "librosa", "soundfile", "soxr", "tensorflow-cpu", "tensorflow", "keras",
    "mlflow", "hydra-core", "ai-edge-litert", "scikit-learn",
)


def machine_info() -> dict:
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = _md.version(name)
        except _md.PackageNotFoundError:
            pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "loadavg_1_5_15min": [round(v, 2) for v in os.getloadavg()],
        "libraries": versions,
    }


def compose(overrides: list[str]):
    from kws.config import compose as kws_compose

    return kws_compose(overrides, conf_dir=CONF_DIR)


def synthetic_dataset(cache: Path, voices: int, takes: int, log=print) -> tuple[Path, dict]:
    """Generate the synthetic Speech Commands stand-in once into ``cache`` (reused afterwards).

    Uses the ``data=synthetic`` settings of conf/ with ``voices``/``takes`` overridden; the
    noise folder is resolved against the repository root (it is relative there).
    """
    cfg = compose(["data=synthetic", f"synthetic.voices={voices}", f"synthetic.takes_per_voice={takes}"])
    s = cfg.data.synthetic
    noise_dir = Path(str(s.noise_dir))
    if not noise_dir.is_absolute():
        noise_dir = (REPO / noise_dir).resolve()
    params = {
        "seed": int(s.seed), "voices": int(s.voices), "takes_per_voice": int(s.takes_per_voice),
        "noise_dir": str(noise_dir), "snr_db": [float(v) for v in s.snr_db],
        "validation_voices": int(s.validation_voices), "testing_voices": int(s.testing_voices),
    }
    dest = cache / f"synthetic-{voices}v-{takes}t"
    done = dest / _DONE
    if done.is_file() and json.loads(done.read_text()).get("params") == params:
        info = json.loads(done.read_text())
        log(f"reusing synthetic dataset {dest} ({info['clips']} clips)")
        return dest, info
    import kws.synthetic

    if dest.exists():
        shutil.rmtree(dest)
    cache.mkdir(parents=True, exist_ok=True)
    log(f"generating synthetic dataset into {dest} ({voices} voices x {takes} takes) ...")
    t0 = time.perf_counter()
    kws.synthetic.generate(
        dest, seed=params["seed"], voices=params["voices"], takes_per_voice=params["takes_per_voice"],
        noise_dir=noise_dir, snr_db=tuple(params["snr_db"]),
        validation_voices=params["validation_voices"], testing_voices=params["testing_voices"],
    )
    seconds = time.perf_counter() - t0
    clips = sum(1 for p in dest.glob("*/*.wav") if not p.parent.name.startswith("_"))
    info = {"params": params, "clips": clips, "generation_seconds": round(seconds, 1)}
    done.write_text(json.dumps(info, indent=2) + "\n")
    log(f"generated {clips} clips in {seconds:.0f} s")
    return dest, info


def word_clips(dataset: Path) -> list[Path]:
    """All word clips (not the background noise) in Speech Commands layout, sorted."""
    return sorted(p for p in dataset.glob("*/*.wav") if not p.parent.name.startswith("_"))


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _dumps(payload: dict) -> str:
    """JSON indented by 2, except that a list of plain values stays on one line (per-clip rows such
    as ``[file, true, predicted]`` would otherwise take five lines each)."""
    flat: list[str] = []

    def fold(obj):
        if isinstance(obj, dict):
            return {k: fold(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            if obj and all(v is None or isinstance(v, (str, int, float, bool)) for v in obj):
                flat.append(json.dumps(list(obj)))
                return f"\0{len(flat) - 1}\0"
            return [fold(v) for v in obj]
        return obj

    return re.sub(r'"\\u0000(\d+)\\u0000"', lambda m: flat[int(m.group(1))], json.dumps(fold(payload), indent=2))


def write_result(name: str | Path, payload: dict) -> Path:
    """Write ``payload`` to ``name`` (a bare file name goes under benchmarks/results/)."""
    path = Path(name) if Path(name).parent != Path(".") else RESULTS_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dumps(payload) + "\n")
    return path


def table(rows: list[list], headers: list[str]) -> str:
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:])])
