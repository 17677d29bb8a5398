"""Result JSON -> markdown table, PNG plot, and the performance parts of the documentation.

    python -m benchmarks.report RESULT.json                 # writes RESULT.md and RESULT.png
    python -m benchmarks.report RESULT.json --md - --no-png # markdown to stdout
    python -m benchmarks.report RESULT.json --update-readme README.md --update-docs docs/performance.md

--update-readme writes README.md's three-line summary, --update-docs the full section of
docs/performance.md (targets, per-op speedups, plot, every slower case); each replaces only
the lines between its file's ``<!-- benchmarks:start ...`` and ``<!-- benchmarks:end -->``.

The pieces: ``report_data`` (ratios, targets, slower cases), ``report_tables`` (NAME.md),
``report_plot`` (NAME.png), ``report_docs`` (the README summary and docs/performance.md).
"""
from __future__ import annotations

import argparse
import os
import sys

from benchmarks.report_data import load
from benchmarks.report_docs import PERFORMANCE_DOC, performance_section, readme_summary, repo_path, update_block
from benchmarks.report_plot import plot
from benchmarks.report_tables import markdown


def write_outputs(result: dict, json_path: str, md: bool = True, png: bool = True) -> dict:
    """Writes <stem>.md and <stem>.png beside the JSON; returns {kind: path or problem}."""
    stem = os.path.splitext(json_path)[0]
    out = {"json": json_path}
    png_name = None
    if png:
        err = plot(result, stem + ".png")
        out["png"] = err or stem + ".png"
        png_name = None if err else os.path.basename(stem + ".png")
    if md:
        with open(stem + ".md", "w") as f:
            f.write(markdown(result, repo_path(json_path), png_name))
        out["md"] = stem + ".md"
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("result", help="a result JSON written by python -m benchmarks")
    p.add_argument("--update-readme", metavar="README", default=None,
                   help="write the three-line performance summary between the marker lines of README")
    p.add_argument("--update-docs", metavar="DOC", default=None,
                   help="write the full performance section between the marker lines of DOC "
                        "(docs/performance.md)")
    p.add_argument("--md", default=None, help="markdown output path ('-' for stdout; default beside the JSON)")
    p.add_argument("--png", default=None, help="plot output path (default beside the JSON)")
    p.add_argument("--no-png", action="store_true")
    a = p.parse_args(argv)
    result = load(a.result)
    path = repo_path(a.result)
    if a.update_readme or a.update_docs:
        rc = 0
        if a.update_docs:
            rc = update_block(a.update_docs, performance_section(result, path, a.update_docs))
        if a.update_readme and rc == 0:
            perf = a.update_docs or PERFORMANCE_DOC
            rc = update_block(a.update_readme, readme_summary(result, path, a.update_readme, perf))
        return rc
    stem = os.path.splitext(a.result)[0]
    png = None
    if not a.no_png:
        png = a.png or stem + ".png"
        err = plot(result, png)
        if err:
            print(f"plot: {err}", file=sys.stderr)
            png = None
    text = markdown(result, path, os.path.relpath(png, os.path.dirname(os.path.abspath(a.md or stem + ".md")))
                    if png else None)
    if a.md == "-":
        print(text)
    else:
        with open(a.md or stem + ".md", "w") as f:
            f.write(text)
        print(a.md or stem + ".md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
