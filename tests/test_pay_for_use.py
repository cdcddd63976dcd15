"""A task that uses no optional feature does none of their work (issue 25, item 1).

Each case runs in a fresh interpreter where the optional extras are absent
(prometheus_client and the OpenTelemetry API cannot be imported, as when
installed without ``[metrics]`` and ``[tracing]``), or installed and not
asked for (no ``metrics_path``, no tracer provider), sends one task through
the middleware and its thread pool (submit, run, poll, replay), and records
every Python function entered meanwhile, in every thread, with the
interpreter's own profiling hook. SQLite statements are read from each
connection's trace callback. Nothing is replaced: the real store, executor
and runner run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_SCRIPT = r"""
import json, sqlite3, sys, threading, time

if sys.argv[1] == "without-extras":
    sys.modules["prometheus_client"] = None  # as installed without the extras
    sys.modules["opentelemetry"] = None

statements = []
_connect = sqlite3.connect

def connect(*args, **kwargs):
    conn = _connect(*args, **kwargs)
    conn.set_trace_callback(lambda sql: recording and statements.append(sql))
    return conn

sqlite3.connect = connect  # the real connection, with a trace callback

from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware

recording = False
entered = set()

def hook(frame, event, arg):
    if recording and event == "call":
        code = frame.f_code
        entered.add(code.co_filename.replace("\\", "/").rsplit("/", 2)[-2:][-1]
                    + ":" + code.co_qualname)

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

threading.setprofile(hook)  # the pool's threads start after this
store = sys.argv[2] if len(sys.argv) > 2 else None
middleware = AsyncMiddleware(app, paths=["/task"], store=store)
client = Client(middleware)

def cycle():
    location = client.get("/task").headers["Location"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.02)
        response = client.get(location)
        if response.status_code == 200:
            assert response.get_data() == b"ok"
            return
    raise AssertionError("the task did not finish")

cycle()  # threads started, connections opened
sys.setprofile(hook)
recording = True
cycle()
recording = False
sys.setprofile(None)
threading.setprofile(None)
middleware.close()
indexes = []
if store:
    with _connect(store[len("sqlite:///"):]) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        indexes = [row[0] for row in rows]
print(json.dumps({"entered": sorted(entered), "statements": statements, "indexes": indexes}))
"""


def _one_cycle(store: str | None = None, extras: bool = False) -> dict[str, list[str]]:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    args = [sys.executable, "-c", _SCRIPT, "with-extras" if extras else "without-extras"]
    args += [store] if store else []
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


# The modules of optional features: none of their functions runs for a plain
# task. (events.wants_events is how a status request is told from a stream
# request: a look at the request, not work for the task.)
_FEATURE_MODULES = (
    "callbacks.py",
    # asyncwsgi/callbacks/, the completion callbacks' package
    "allow.py",
    "webhook.py",
    "attempt.py",
    "lanes.py",
    "outcomes.py",
    "sender.py",
    "listing.py",
    "listindex.py",  # the task list's index in the memory store
    "metrics.py",
    "tracing.py",
    "events.py",
)
_ALLOWED = {"events.py:wants_events"}
# Work a store does for a feature: waking watchers.
_FEATURE_FUNCTIONS = {
    "threading.py:Condition.notify",
    "threading.py:Condition.notify_all",
}


def _feature_work(entered: list[str]) -> list[str]:
    return sorted(
        name
        for name in entered
        if name not in _ALLOWED
        and (name.split(":", 1)[0] in _FEATURE_MODULES or name in _FEATURE_FUNCTIONS)
    )


def test_memory_store_task_does_no_feature_work() -> None:
    seen = _one_cycle()
    assert "run.py:TaskRunner.run" in seen["entered"]  # the hook saw the pool's thread
    assert _feature_work(seen["entered"]) == []


def test_installed_extras_cost_a_task_nothing_until_asked_for() -> None:
    """prometheus_client and the OpenTelemetry API importable (another package
    may have brought them), no ``metrics_path`` and no tracer provider: the
    task counts nothing and traces nothing."""
    seen = _one_cycle(extras=True)
    assert "run.py:TaskRunner.run" in seen["entered"]
    # A tracer provider may be set at any time: asking the API whether one is
    # (once at submit, once at the run) is the check, not tracing work.
    checks = {"tracing.py:_active", "tracing.py:start_submit", "tracing.py:start_run"}
    assert [name for name in _feature_work(seen["entered"]) if name not in checks] == []
    assert [name for name in seen["entered"] if name.startswith("values.py:")] == []


def test_sqlite_store_task_does_no_feature_work(tmp_path: Path) -> None:
    seen = _one_cycle(f"sqlite:///{tmp_path / 'tasks.db'}")
    assert "run.py:TaskRunner.run" in seen["entered"]
    assert _feature_work(seen["entered"]) == []
    assert seen["statements"], "the trace callback saw no statement"
    # No completion callback asked for: no statement about callbacks.
    assert [s for s in seen["statements"] if "callbacks" in s] == []
    # The task list was never read: its indexes are not kept.
    assert [name for name in seen["indexes"] if name.startswith("tasks_list")] == []


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_list_works_once_read(store: str, tmp_path: Path) -> None:
    """The list's index is built on the first read, from what is stored, and
    kept from then on: tasks before and after it are listed alike."""
    import time

    from werkzeug.test import Client

    from asyncwsgi import AsyncMiddleware

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    url = None if store == "memory" else f"sqlite:///{tmp_path / 'tasks.db'}"
    middleware = AsyncMiddleware(app, paths=["/task"], store=url, list_tasks=True)
    try:
        client = Client(middleware)
        first = client.get("/task").json["id"]  # type: ignore[index]
        assert [t["id"] for t in client.get("/status/").json["tasks"]] == [first]  # type: ignore[index]
        time.sleep(0.001)
        second = client.get("/task").json["id"]  # type: ignore[index]
        listed = client.get("/status/").json["tasks"]  # type: ignore[index]
        assert [t["id"] for t in listed] == [second, first]
    finally:
        middleware.close(timeout=10)


def test_memory_store_copies_every_field_of_a_record() -> None:
    """The memory store's copy of a record (positional, for speed) gives each
    field its own value back, in the class's order."""
    from dataclasses import fields

    from asyncwsgi.stores.memory import _snapshot
    from asyncwsgi.task import TaskRecord

    values = {field.name: object() for field in fields(TaskRecord)}
    record = TaskRecord(**values)  # type: ignore[arg-type]
    copy = _snapshot(record)
    assert copy is not record
    assert {name: getattr(copy, name) for name in values} == values
