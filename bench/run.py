"""The benchmarks: list them, or run one by name.

    .venv/bin/python bench/run.py --list              # each benchmark: what it measures, how long its defaults take
    .venv/bin/python bench/run.py NAME [ARGS...]      # bench/NAME.py ARGS (NAME --help: its options)

Every benchmark writes OUT/NAME.json (bench/common.py) and ends with one result line.
"""

from __future__ import annotations

import ast
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOT_BENCHES = {"common", "run"}


def benches() -> dict[str, Path]:
    """Benchmark name -> script, sorted by name."""
    return {p.stem: p for p in sorted(HERE.glob("*.py")) if p.stem not in NOT_BENCHES}


def describe(script: Path) -> tuple[str, str]:
    """(first line of the docstring, DURATION) of a script, read without importing it (imports take seconds)."""
    tree = ast.parse(script.read_text())
    doc = (ast.get_docstring(tree) or "").strip()
    duration = next((node.value.value for node in tree.body if isinstance(node, ast.Assign)
                     and any(isinstance(t, ast.Name) and t.id == "DURATION" for t in node.targets)
                     and isinstance(node.value, ast.Constant)), "duration not declared")
    return doc.splitlines()[0] if doc else "(no docstring)", duration


def main(argv: list[str]) -> int:
    found = benches()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] == "--list":
        width = max(map(len, found))
        for name, script in found.items():
            what, duration = describe(script)
            print(f"{name:{width}s}  {what}\n{'':{width}s}  [{duration}]")
        return 0
    name, args = argv[0], argv[1:]
    if name not in found:
        print(f"bench/run.py: no benchmark {name!r}; known: {', '.join(found)}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE))  # the scripts import bench/common.py
    sys.argv = [str(found[name]), *args]
    runpy.run_path(str(found[name]), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
