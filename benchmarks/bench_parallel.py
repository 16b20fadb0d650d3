"""Training throughput of the served architecture on this machine's cores: one model on
TensorFlow's default threads (every core), one model on one thread, and one model per core on one
thread each, side by side (what ``trainer.parallel_models=auto`` with ``trainer.threads=1`` does
for a seed ensemble). Each setting trains one epoch of random features of the real shape
(``conf/``'s features and model) in fresh processes, after a warm-up epoch; the figure is the
wall-clock time per example of all the models together.

    .venv/bin/python benchmarks/bench_parallel.py [--examples 6400]

Writes ``benchmarks/results/parallel.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _common import CONF_DIR, REPO, machine_info, table, write_result

_CHILD = r"""
import json, sys, time
threads, n = json.loads(sys.argv[1]), int(sys.argv[2])
from kws.training.distribute import set_threads
set_threads(threads)  # the train stage's own setting of trainer.threads (None: TensorFlow's default)
import keras, numpy as np
from kws.config import compose
from kws.features import FeatureConfig
from kws.models import build_model
cfg = compose([], conf_dir=sys.argv[3])
shape = FeatureConfig.from_dict(dict(cfg.features)).shape
rng = np.random.default_rng(0)
x = rng.standard_normal((n, *shape, 1), dtype=np.float32)
y = keras.utils.to_categorical(rng.integers(0, 12, n), 12)
model = build_model(cfg.model, shape, 12, x[..., 0])
model.compile(optimizer="adam", loss="categorical_crossentropy")
model.fit(x[:640], y[:640], batch_size=int(cfg.train.batch_size), epochs=1, verbose=0)
print("ready", flush=True)
sys.stdin.readline()  # every process starts its timed epoch together
t = time.perf_counter()
model.fit(x, y, batch_size=int(cfg.train.batch_size), epochs=1, verbose=0)
print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)
"""


def measure(processes: int, threads: int | None, examples: int) -> dict:
    """``processes`` models trained at once, ``threads`` each (None: TensorFlow's default)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO / "src")}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(threads), str(examples), str(CONF_DIR)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(processes)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    started = time.perf_counter()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    seconds = [json.loads(p.stdout.readline())["seconds"] for p in procs]
    wall = time.perf_counter() - started
    for p in procs:
        p.wait()
    return {"processes": processes, "threads": threads, "examples_each": examples,
            "seconds_each": [round(s, 2) for s in seconds], "wall_seconds": round(wall, 2),
            "ms_per_example": round(1000 * wall / (examples * processes), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=6400)
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    settings = [(1, None), (1, 1), (cores, 1), (cores + 1, 1)]  # the last: one more model than cores
    rows = [measure(p, t, args.examples) for p, t in settings]
    base = rows[0]["ms_per_example"]
    for r in rows:
        r["speedup"] = round(base / r["ms_per_example"], 2)
    print(table([[r["processes"], r["threads"] or "default", r["ms_per_example"], r["speedup"]] for r in rows],
                ["models at once", "threads each", "ms/example (all together)", "speed-up"]))
    write_result("parallel.json", {"machine": machine_info(), "cores": cores, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
