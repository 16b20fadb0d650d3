"""Score a model bundle on any labelled folder of clips: ``kws-score BUNDLE FOLDER``.

Each clip goes through exactly what the HTTP service does with an upload (decode, the silence
check, the predictor: :mod:`kws.scoring.classifier`), so the figure is the service's own; a clip
the service would reject (corrupt, empty, silent, too long) is not a crash: it counts as wrong
and is listed under ``errors``.

Folder layouts (``--layout``, :mod:`kws.scoring.folders`): ``archive`` (the Speech Commands
archive, ``<word>/<speaker>_nohash_<n>.wav``; a word that is not a model label is ``_unknown_``;
``--silence-dir`` adds a folder of ``_silence_`` clips), ``canonical`` (``<class>/*.wav``, one
folder per model label) or ``auto``. ``--list FILE`` keeps only the clips listed (``word/file.wav``
a line, as ``testing_list.txt``).

The report gives accuracy and per-class recall with 95 % Wilson intervals, the top confusions,
the errors, the per-clip latency and the throughput (clips/s, with and without the start-up).

The clips are scored by ``--workers`` processes (default: every core), each on batches of up to
``--batch`` clips in one feature pass and one runtime call (:mod:`kws.scoring.batch`), which
gives the answers clip-by-clip scoring gives; ``--runtime tflite_int8`` scores with the bundle's
int8 model. ``--workers 1 --batch 1`` scores one clip at a time, as the service does.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path

from kws.errors import ConfigError
from kws.scoring.batch import DEFAULT_BATCH
from kws.scoring.folders import LAYOUTS

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kws-score", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="serving bundle directory (model.tflite, labels.json, ...)")
    p.add_argument("folder", type=Path, help="folder of labelled clips")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="folder layout (default: %(default)s)")
    p.add_argument("--silence-dir", type=Path, help="every .wav in this folder is a _silence_ clip")
    p.add_argument("--list", dest="list_file", type=Path, help="score only the clips listed (word/file.wav a line)")
    p.add_argument("--runtime", choices=("auto", "tflite", "tflite_int8", "keras"), default="tflite",
                   help="default: %(default)s (auto: what the service picks)")
    p.add_argument("--workers", type=int, default=None, help="processes scoring in parallel (default: every core)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                   help="clips a worker scores together at most (default: %(default)s)")
    p.add_argument("--threshold", type=float, help="below this confidence the keyword is _unknown_ (as the service)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--output", type=Path, help="also write the JSON result to this file")
    p.add_argument("--limit", type=int, help="score a fixed-seed random sample of at most N clips")
    return p.parse_args(argv)


def _check(args: argparse.Namespace) -> None:
    """Refuse bad numbers before anything is loaded or walked."""
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1, got {args.threshold:g}")
    for name in ("workers", "batch", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(args, name)}")


def _write(path: Path, text: str) -> None:
    from kws.atomic import write_text

    try:
        write_text(path, text + "\n")
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err.strerror or err}") from None
    log.info("result written to %s", path)


def run(args: argparse.Namespace) -> dict:
    from kws.bundle import read_meta
    from kws.scoring.batch import score_bundle
    from kws.scoring.folders import collect
    from kws.scoring.report import format_report
    from kws.serving.runtimes import int8_preferred

    _check(args)
    meta = read_meta(args.bundle)  # fails fast (ModelNotFoundError) before the folder is walked
    items, layout = collect(args.folder, meta.labels, args.layout, args.silence_dir, args.list_file)
    if args.limit is not None and args.limit < len(items):
        items = sorted(random.Random(0).sample(items, args.limit))
    runtime = args.runtime
    if runtime == "auto":  # what the service would load
        runtime = "tflite_int8" if int8_preferred(meta) else "tflite"
    result = score_bundle(items, args.bundle, runtime=runtime, threshold=args.threshold, workers=args.workers,
                          batch=args.batch)
    result.update({"bundle": str(args.bundle), "folder": str(args.folder), "layout": layout,
                   "threshold": args.threshold})
    text = json.dumps(result, indent=2)
    if args.output is not None:
        _write(args.output, text)
    if args.json:
        print(text)
    else:
        title = f"kws-score: {args.bundle} ({result['runtime']}) on {args.folder} [{layout} layout]"
        print(format_report(result, title))
    return result


def main(argv: list[str] | None = None) -> int:
    from kws.cli import run_cli

    args = parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
