"""Every table of figures in README.md and docs/*.md, generated from ``benchmarks/results/*.json``.

A doc asks for a table with a pair of markers; what lies between them is this script's to write:

    <!-- table:real -->
    (generated)
    <!-- /table -->

    .venv/bin/python benchmarks/report.py            # rewrite the tables in place
    .venv/bin/python benchmarks/report.py --check    # exit 1 naming each stale table; writes nothing

The tables are plain functions of the result files (``TABLES``), so a figure in a doc is always
the one a benchmark wrote; ``tests/test_docs.py`` runs the same check. They live in
``report_tables.py`` (the helpers; accuracy, prepare, train, serving, scale),
``report_serving.py`` (speed, overload, hostile uploads) and ``report_streams.py`` (the pooled
DET curve); every ``table_NAME`` there is table ``NAME`` (underscores as hyphens). The plots
(``report_streams.FIGURES``, PNGs under ``docs/figures/``) are drawn the same way: each records
the digest of what it shows, and ``--check`` names one whose results have changed since.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report_serving  # noqa: E402
import report_streams  # noqa: E402
import report_tables  # noqa: E402
from report_tables import REPO  # noqa: E402

MARKER = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)
TABLES = {name.removeprefix("table_").replace("_", "-"): fn for module in (report_tables, report_serving, report_streams)
          for name, fn in vars(module).items() if name.startswith("table_") and callable(fn)}


# --------------------------------------------------------------------------- the docs
def docs() -> list[Path]:
    return [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def rewrite(text: str) -> str:
    """``text`` with every marked table regenerated (an unknown table name is an error)."""
    def fill(m: re.Match) -> str:
        if m.group(2) not in TABLES:
            raise KeyError(f"unknown table {m.group(2)!r}: one of {', '.join(sorted(TABLES))}")
        return m.group(1) + TABLES[m.group(2)]() + "\n" + m.group(4)
    return MARKER.sub(fill, text)


def stale(paths: list[Path] | None = None) -> list[str]:
    """``path: table NAME`` for every table whose text differs from what the results give (and,
    for the docs themselves, ``path: figure`` for every stale plot)."""
    out = [] if paths else report_streams.stale_figures()
    for path in paths or docs():
        if not path.is_file():
            continue
        text = path.read_text()
        for m in MARKER.finditer(text):
            if rewrite(m.group(0)) != m.group(0):
                out.append(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: table {m.group(2)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 naming each stale table; write nothing")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for line in bad:
            print(f"stale: {line} (run `python benchmarks/report.py`)", file=sys.stderr)
        return 1 if bad else 0
    for path in docs():
        if path.is_file() and (new := rewrite(old := path.read_text())) != old:
            path.write_text(new)
            print(f"rewrote tables in {path.relative_to(REPO)}")
    for rel in report_streams.write_figures():
        print(f"drew {rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
