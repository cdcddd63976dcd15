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
        pytest.param(
            ["asyncwsgi.executors.remote", "asyncwsgi.executors.worker", "asyncwsgi.cli"],
            set(),
            id="core",
        ),
        pytest.param(["asyncwsgi.executors.celery"], {"celery", "kombu", "redis"}, id="celery"),
        pytest.param(["asyncwsgi.executors.rq"], {"rq", "redis"}, id="rq"),
    ],
)
def test_importing_imports_no_unused_engine(modules: list[str], allowed: set[str]) -> None:
    imported = _imported_after(*modules)
    assert imported & set(ENGINES) <= allowed, imported & set(ENGINES)


_SAME = """
import asyncwsgi.contrib.celery as old_celery, asyncwsgi.executors.celery as celery
import asyncwsgi.contrib.rq as old_rq, asyncwsgi.executors.rq as rq
import asyncwsgi.executor as old_executor, asyncwsgi.executors as executors
import asyncwsgi.remote as old_remote
assert old_celery.CeleryExecutor is celery.CeleryExecutor
assert old_celery.TASK_NAME == celery.TASK_NAME == "asyncwsgi.run"
assert old_rq.RQExecutor is rq.RQExecutor and old_rq.Worker is rq.Worker
assert old_rq.run is rq.run
assert old_executor.Executor is executors.Executor
assert old_executor.ThreadExecutor is executors.ThreadExecutor
assert old_remote.RemoteExecutor is executors.RemoteExecutor
print("same")
"""


def test_the_first_import_paths_still_import_the_executors() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SAME],
        cwd=ROOT, capture_output=True, check=True, timeout=60, text=True,
    ).stdout  # fmt: skip
    assert out.strip() == "same"
