"""A normal exit closes the middlewares with a shared store, through one
atexit registration for the whole process (not one per middleware)."""

from __future__ import annotations

import atexit
import subprocess
import sys
import textwrap
from pathlib import Path

from asyncwsgi import AsyncMiddleware

ROOT = Path(__file__).resolve().parent.parent


def _app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_many_middlewares_register_one_exit_hook(tmp_path):
    made = [
        AsyncMiddleware(_app, paths=["/w/*"], store=f"sqlite:///{tmp_path}/tasks.db")
        for _ in range(3)
    ]
    before = atexit._ncallbacks()
    made += [
        AsyncMiddleware(_app, paths=["/w/*"], store=f"sqlite:///{tmp_path}/tasks.db")
        for _ in range(20)
    ]
    try:
        assert atexit._ncallbacks() == before
    finally:
        for middleware in made:
            middleware.close()


def test_a_normal_exit_finishes_the_tasks_of_every_middleware(tmp_path):
    script = textwrap.dedent(
        f"""
        import time
        from werkzeug.test import Client
        from asyncwsgi import AsyncMiddleware

        def slow(environ, start_response):
            time.sleep(0.5)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"done"]

        for name in ("a", "b"):
            mw = AsyncMiddleware(slow, paths=["/w/*"], store="sqlite:///{tmp_path}/" + name + ".db")
            print(Client(mw).post("/w/1").headers["Location"].rsplit("/", 1)[1], flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    from asyncwsgi.stores import SQLiteStore

    for name, task_id in zip(("a", "b"), ids, strict=True):
        store = SQLiteStore(str(tmp_path / f"{name}.db"))
        try:
            record = store.get(task_id)
            assert record is not None and record.state == "done", (name, record)
            assert record.result is not None and record.result.body == b"done"
        finally:
            store.close()
