"""Each engine is optional: importing asyncwsgi (or one engine's module)
imports no engine that is not used. Checked in a fresh interpreter, where
nothing else has imported them yet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("celery", "kombu", "rq", "django", "django_tasks", "django_rq", "redis")

_IMPORTED = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _imported_after(*modules: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTED, *modules],
        cwd=ROOT, capture_output=True, check=True, timeout=60, text=True,
    ).stdout  # fmt: skip
    return set(json.loads(out))


@pytest.mark.parametrize(
    ("modules", "allowed"),
    [
        pytest.param(["asyncwsgi"], set(), id="asyncwsgi"),
        pytest.param(["asyncwsgi.remote", "asyncwsgi.cli"], set(), id="core"),
        pytest.param(["asyncwsgi.contrib.celery"], {"celery", "kombu", "redis"}, id="celery"),
        pytest.param(["asyncwsgi.contrib.rq"], {"rq", "redis"}, id="rq"),
    ],
)
def test_importing_imports_no_unused_engine(modules: list[str], allowed: set[str]) -> None:
    imported = _imported_after(*modules)
    assert imported & set(ENGINES) <= allowed, imported & set(ENGINES)
