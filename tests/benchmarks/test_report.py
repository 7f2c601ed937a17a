"""The generated results tables of README.md and docs/*.md (benchmarks/report.py) and the docs' links."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parents[2]


def test_committed_blocks_match_the_results():
    problems = report.run(ROOT, check=True)
    assert not problems, "stale generated tables; run `python -m benchmarks.report`:\n\n" + "\n\n".join(problems)


def test_every_block_is_used_once_and_every_file_has_its_sources():
    used = [m.group(1) for path in report.doc_files(ROOT) for m in report.MARKER.finditer(path.read_text())]
    assert sorted(used) == sorted(set(used)), "a block appears twice"
    assert set(used) == set(report.BLOCKS), f"registered but unused: {set(report.BLOCKS) - set(used)}"
    for blk in report.BLOCKS.values():
        for rel in blk.sources:
            assert (ROOT / rel).is_file(), rel


def _copy_docs(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    return tmp_path


def test_a_tampered_block_is_detected(tmp_path):
    docs = _copy_docs(tmp_path)
    report.run(docs, results_root=ROOT)  # render into the copy
    assert report.run(docs, results_root=ROOT, check=True) == []
    readme = docs / "README.md"
    text = readme.read_text()
    start = text.index("<!-- report:matrix-headline -->")
    row = text.index("| random |", start)
    digit = re.compile(r"\d").search(text, row + len("| random |"))
    changed = str((int(digit.group()) + 1) % 10)
    readme.write_text(text[: digit.start()] + changed + text[digit.end() :])
    problems = report.run(docs, results_root=ROOT, check=True)
    assert len(problems) == 1 and "README.md" in problems[0]
    assert report.main(["--check"]) == 0  # the real tree is untouched
    report.run(docs, results_root=ROOT)  # rewriting repairs it
    assert readme.read_text() == text


def test_text_outside_blocks_is_left_alone(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text("intro 1.23\n<!-- report:solver-speed -->\nold\n<!-- /report -->\nafter 4.56\n")
    report.run(tmp_path, results_root=ROOT)
    text = doc.read_text()
    assert text.startswith("intro 1.23\n<!-- report:solver-speed -->\n*`python benchmarks/solver.py")
    assert text.endswith("<!-- /report -->\nafter 4.56\n") and "old" not in text


def test_missing_results_file_is_a_clear_error(tmp_path):
    (tmp_path / "README.md").write_text("<!-- report:solver-speed -->\n<!-- /report -->\n")
    with pytest.raises(report.ReportError, match=r"benchmarks/results/solver\.json.*does not exist.*solver\.py"):
        report.run(tmp_path, check=True)


def test_unknown_block_is_a_clear_error(tmp_path):
    (tmp_path / "README.md").write_text("<!-- report:no-such-table -->\n<!-- /report -->\n")
    with pytest.raises(report.ReportError, match="unknown block 'no-such-table'"):
        report.run(tmp_path, results_root=ROOT, check=True)


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize("doc", ["README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))])
def test_relative_links_point_to_existing_files(doc):
    path = ROOT / doc
    text = path.read_text()
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{doc}: link to {target} points to a missing file"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest.read_text()), f"{doc}: link to {target}: no such heading"


REPO_PATH = re.compile(r"`((?:bqq|kernels|benchmarks|examples|tests|docs|\.ci)/[\w./-]*)`")


@pytest.mark.parametrize("doc", ["README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))])
def test_repository_paths_named_in_the_docs_exist(doc):
    """A file or folder of this repository named in code font (`bqq/ptq/plan.py`) must exist."""
    missing = [p for p in REPO_PATH.findall((ROOT / doc).read_text()) if not (ROOT / p).exists()]
    assert not missing, f"{doc} names paths that do not exist: {missing}"


def _tracked_top_level_folders() -> set[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return {line.split("/")[0] for line in out.splitlines() if "/" in line}


def test_readme_layout_names_every_top_level_folder_and_bqq_subpackage():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    folders = [f"{f}/" for f in _tracked_top_level_folders() if (ROOT / f).is_dir()]
    # subpackages get a row (`bqq/ptq/`), except the transformers integration, named `hf` in the bqq/ row
    subpackages = [f"bqq/{p.parent.name}/" for p in (ROOT / "bqq").glob("*/__init__.py") if p.parent.name != "hf"]
    missing = [f for f in [*folders, *subpackages] if f"`{f}`" not in layout]
    assert not missing, f"README's layout misses {missing}"
    assert "`hf` (" in layout


def test_readme_methods_table_lists_every_method():
    import bqq

    readme = (ROOT / "README.md").read_text()
    missing = [m for m in bqq.available_methods() if f"| `{m}` |" not in readme]
    assert not missing, f"README's methods table misses {missing}"


def test_readme_opens_with_the_two_commands_ci_runs():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[2] == "```bash" and lines[5] == "```"
    install, tests = lines[3], lines[4]
    assert install.startswith("python3 -m venv .venv && ") and install.endswith(".venv/bin/bqq demo")
    assert tests == ".venv/bin/python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install in ci and tests in ci, "README's first commands must be the ones .ci/run runs verbatim"
    assert len(lines) <= 250
