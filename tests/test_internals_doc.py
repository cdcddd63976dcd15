"""docs/internals.md's layout is the package's: its tree lists every module
and package, one line each saying its job, and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "internals.md"


def _tree() -> dict[str, str]:
    """Path (relative to the package) -> the job its line gives."""
    text = PAGE.read_text()
    block = re.search(r"```text\nasyncwsgi/\n(.*?)```", text, re.S)
    assert block, "docs/internals.md has no ```text tree of asyncwsgi/"
    entries: dict[str, str] = {}
    folders: list[str] = []
    for line in block[1].splitlines():
        indent = (len(line) - len(line.lstrip(" "))) // 4
        name, _, job = line.strip().partition("  ")
        assert indent >= 1, line
        del folders[indent - 1 :]
        path = "/".join([*folders, name.rstrip("/")])
        entries[path] = job.strip()
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
    return entries


def _package() -> set[str]:
    package = ROOT / "asyncwsgi"
    found = {str(p.relative_to(package)) for p in package.rglob("*.py")}
    found |= {str(p.parent.relative_to(package)) for p in package.rglob("__init__.py")}
    return found - {"."}


def test_the_tree_lists_every_module_and_nothing_else() -> None:
    listed, present = set(_tree()), _package()
    assert not present - listed, f"missing from docs/internals.md: {sorted(present - listed)}"
    assert not listed - present, f"gone, still in docs/internals.md: {sorted(listed - present)}"


def test_every_line_says_its_job() -> None:
    assert all(_tree().values()), [path for path, job in _tree().items() if not job]
