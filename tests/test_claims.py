"""Every figure quoted in README.md and docs/RESULTS.md rebuilds from committed result files, or says it cannot.

A quoted figure is a fenced block whose first line is `$ python bench/NAME.py ...` or `$ rlcast ...` (a command
that reads committed files only, in seconds), followed by lines its output must contain, in order (`...` skips).
The test runs every such command and fails when a quote no longer matches what the files give, so a stale figure
cannot land. A section of docs/RESULTS.md with measured figures but no such block must say "(files lost; not
rebuildable)". Every committed result file records the machine, the commit, the package versions and the command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "RESULTS.md"]
LOST = "(files lost; not rebuildable)"
RESULTS = ROOT / "docs" / "results"


def quoted_blocks(path: Path) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of every fenced block of `path` that starts with `$ python bench/` or
    `$ rlcast `."""
    blocks, text = [], path.read_text()
    for body in re.findall(r"^[ \t]*```[a-z]*\n(.*?)^[ \t]*```", text, flags=re.S | re.M):
        lines = [line.strip() for line in body.rstrip("\n").splitlines()]
        if lines and re.match(r"\$ (python bench/|rlcast )", lines[0]):
            blocks.append((lines[0][2:], lines[1:]))
    return blocks


def all_blocks():
    """Every quoted figure: a block with output lines (a bare `$ command` block is a usage example, not a figure)."""
    return [(path.name, command, expected) for path in DOCS for command, expected in quoted_blocks(path)
            if any(line.strip() and line.strip() != "..." for line in expected)]


SHARED = "../shared/"  # the public logs a figure may rest on but the repository may not copy (their licence)


def run_quoted(command: str) -> str:
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
    else:
        argv = [sys.executable, "-m", "rlcast.apps.cli", *argv[1:]]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, f"{command} failed:\n{done.stderr[-2000:]}"
    return done.stdout


def missing_lines(output: str, expected: list[str]) -> list[str]:
    """The expected lines not found in `output` in order (`...` lines skipped, surrounding whitespace ignored)."""
    lines = [line.rstrip() for line in output.splitlines()]
    at, missing = 0, []
    for want in (w.rstrip() for w in expected):
        if not want.strip() or want.strip() == "...":
            continue
        hit = next((i for i in range(at, len(lines)) if lines[i].strip() == want.strip()), None)
        if hit is None:
            missing.append(want)
        else:
            at = hit + 1
    return missing


@pytest.mark.slow
@pytest.mark.parametrize("doc,command,expected", all_blocks(), ids=lambda v: v if isinstance(v, str) else "")
def test_quoted_figures_rebuild(doc, command, expected):
    for word in shlex.split(command)[1:]:
        if word.startswith(SHARED) and not (ROOT / word).exists():
            pytest.skip(f"{word} is not on this machine (public logs kept outside the repository)")
        if "/" in word and not word.startswith("-") and not (ROOT / word).exists() and "=" not in word:
            pytest.fail(f"{doc}: `{command}` reads {word}, which is not committed")
    missing = missing_lines(run_quoted(command), expected)
    assert not missing, f"{doc}: `{command}` no longer prints: {missing}"


def test_the_docs_quote_figures():
    assert len(all_blocks()) >= 3


def test_every_results_section_rebuilds_or_says_why_not():
    text = (ROOT / "docs" / "RESULTS.md").read_text()
    bare = []
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title = section.splitlines()[0]
        has_figures = re.search(r"\b\d+\.\d+x\b|\b0\.\d{3}\b", section)
        quoted = re.search(r"^\$ (python bench/|rlcast )", section, flags=re.M)
        if has_figures and not quoted and LOST not in section:
            bare.append(title)
    assert not bare, f"docs/RESULTS.md sections with figures that neither rebuild nor say {LOST!r}: {bare}"


def test_readme_figures_name_their_command():
    """A README paragraph quoting a speed-up (1.23x) names the command that reprints it, or says it cannot."""
    text = re.sub(r"^```.*?^```", "", (ROOT / "README.md").read_text(), flags=re.S | re.M)
    bare = [p.strip()[:80] for p in text.split("\n\n")
            if re.search(r"\b\d+\.\d+x\b", p) and not re.search(r"bench/\w+\.py|" + re.escape(LOST), p)]
    assert not bare, f"README paragraphs with speed-ups but no command: {bare}"


def result_files() -> list[Path]:
    return sorted(p for p in RESULTS.rglob("*.json")
                  if p.relative_to(RESULTS).parts[0] != "curves" or p.name == "provenance.json")


@pytest.mark.parametrize("path", result_files(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_result_files_record_where_they_come_from(path):
    record = json.loads(path.read_text())
    record = record.get("provenance", record)
    for key in ("machine", "commit", "versions", "command"):
        assert record.get(key), f"{path.relative_to(ROOT)}: no {key}"


def test_every_curve_has_its_provenance():
    for folder in (RESULTS / "curves").glob("*/*"):
        if folder.is_dir():
            assert {"run.json", "provenance.json"} <= {p.name for p in folder.iterdir()}, folder


def test_missing_lines_finds_a_changed_figure():
    out = "a\nspeedup=1.04 seeds=2\nz\n"
    assert missing_lines(out, ["speedup=1.04 seeds=2"]) == []
    assert missing_lines(out, ["speedup=1.05 seeds=2"]) == ["speedup=1.05 seeds=2"]
    assert missing_lines(out, ["z", "...", "a"]) == ["a"]  # in order
