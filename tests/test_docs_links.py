"""The documentation: every relative link resolves, the README stays short and keeps its
quick start, and the generated performance parts are what the report tool writes now."""
import glob
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted({os.path.join(ROOT, "README.md"), os.path.join(ROOT, "benchmarks", "README.md"),
               *glob.glob(os.path.join(ROOT, "docs", "*.md"))})
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def _text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _links(path):
    return LINK.findall(FENCE.sub("", _text(path)))


def _slugs(path):
    """GitHub's heading anchors of a markdown file."""
    heads = re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", FENCE.sub("", _text(path)), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(doc):
    bad = []
    for target in _links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
        if not os.path.exists(dest):
            bad.append(f"{target}: {os.path.relpath(dest, ROOT)} does not exist")
        elif anchor and dest.endswith(".md") and anchor not in _slugs(dest):
            bad.append(f"{target}: no heading #{anchor} in {os.path.relpath(dest, ROOT)}")
    assert not bad, f"{os.path.relpath(doc, ROOT)}:\n" + "\n".join(bad)


def test_link_check_sees_links():
    assert "docs/performance.md" in _links(os.path.join(ROOT, "README.md"))
    assert len(_links(os.path.join(ROOT, "docs", "performance.md"))) >= 3


def test_readme_is_short_and_keeps_the_quick_start():
    readme = _text(os.path.join(ROOT, "README.md"))
    assert len(readme.encode()) <= 7 * 1024
    for command in ("bash scripts/train.sh", "bash scripts/test.sh"):
        assert command in readme
    assert "bash scripts/test.sh" in _text(os.path.join(ROOT, ".ci", "run"))


def _block(path):
    lines = _text(path).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("<!-- benchmarks:start"))
    end = lines.index("<!-- benchmarks:end -->")
    return "\n".join(lines[start + 1:end])


def test_generated_performance_parts_are_current():
    sys.path.insert(0, ROOT)
    from benchmarks import report_data, report_docs

    perf = os.path.join(ROOT, "docs", "performance.md")
    m = re.search(r"Generated from \[`(benchmarks/results/[^`]+\.json)`\]", _block(perf))
    assert m, "docs/performance.md does not name its result file"
    path = os.path.join(ROOT, m.group(1))
    result = report_data.load(path)
    hint = f"regenerate: {report_docs.update_command(m.group(1))}"
    assert _block(perf) == report_docs.performance_section(result, path, perf).rstrip("\n"), hint
    readme = os.path.join(ROOT, "README.md")
    assert _block(readme) == report_docs.readme_summary(result, path, readme, perf), hint
