"""The engine examples run as their docstrings say: each ``$ command`` line
is run by bash as written (the web server on a free port instead of 8000),
and a report goes through 202, the engine's worker and the status URL.

examples/flask_rq.py: Flask + RQ (``rq worker``, a real redis-server);
examples/django_tasks_project: Django + django-tasks-db (``db_worker``, SQLite).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.services import RedisServer, free_port, stop_group
from tests.helpers import need
from tests.test_executor_contract import Web

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _need(*modules: str, programs: tuple[str, ...] = ()) -> None:
    need(*modules, programs=programs)


def commands(docstring: str) -> list[str]:
    """The ``$ `` lines of a docstring."""
    return [line.strip()[2:] for line in docstring.splitlines() if line.strip().startswith("$ ")]


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="asyncwsgi-example-") as name:
        yield Path(name)


def _run_example(module: str, env: dict[str, str], cwd: Path) -> None:
    """Run the example's commands, then one report through it."""
    doc = importlib.util.find_spec(module)
    assert doc is not None and doc.origin is not None
    docstring = _module_docstring(Path(doc.origin))
    lines = commands(docstring)
    assert lines, f"no $ commands in {module}'s docstring"
    port = free_port()
    env = {**env, "PYTHONPATH": str(ROOT), "STEP_SECONDS": "0.05", "PYTHONWARNINGS": "ignore"}
    services: list[subprocess.Popen[bytes]] = []
    try:
        for line in lines:
            line = line.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            if line.startswith("export "):
                name, _, value = line[len("export ") :].partition("=")
                # As the shell would expand it.
                env[name] = subprocess.run(
                    ["bash", "-c", f'printf %s "{value}"'], env=env, check=True,
                    capture_output=True, text=True,
                ).stdout  # fmt: skip
            elif "worker" in line or "gunicorn" in line:
                services.append(
                    subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=cwd, env=env,
                                     start_new_session=True, stdout=subprocess.DEVNULL)
                )  # fmt: skip
            else:
                subprocess.run(["bash", "-c", line], cwd=cwd, env=env, check=True, timeout=120)
        web = Web(port)
        deadline = time.monotonic() + 60
        while True:
            for service in services:
                assert service.poll() is None, f"{service.args} exited"
            try:
                web.request("GET", "/reports/q3")
                break
            except OSError:
                assert time.monotonic() < deadline, "the example's server never answered"
                time.sleep(0.1)
        location = web.submit("/reports/q3")
        status, _, body = web.wait(location, timeout=60)
        assert status == 200, (status, body)
        document = json.loads(body)
        assert document["report"] == "q3" and document["rows"] == 42
        # Run by the engine's worker (or a work horse it forked, gone by
        # now), not by a web process.
        server = services[-1].pid
        web = {server}
        for task in Path(f"/proc/{server}/task").iterdir():
            web.update(int(pid) for pid in (task / "children").read_text().split())
        assert document["pid"] not in web, document
    finally:
        for service in reversed(services):
            stop_group(service)


def _module_docstring(path: Path) -> str:
    import ast

    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring is not None
    return docstring


def test_flask_rq_example(workdir: Path) -> None:
    _need("flask", "rq", "gunicorn", programs=("redis-server",))
    with RedisServer(shutil.which("redis-server") or "redis-server") as redis:
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis.port}"}
        _run_example("examples.flask_rq", env, workdir)


def test_django_tasks_db_example(workdir: Path) -> None:
    _need("django", "django_tasks", "django_tasks_db", "gunicorn")
    env = {**os.environ, "EXAMPLE_DATA": str(workdir)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    _run_example("examples.django_tasks_project.wsgi", env, workdir)
    assert (workdir / "db.sqlite3").exists() and (workdir / "tasks.db").exists()
