"""DjangoTasksExecutor against the project's TASKS settings.

Each case runs in a fresh interpreter with its own Django settings (Django
is configured once per process); the contract suite,
tests/test_executor_contract.py, runs tasks on real workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import need

ROOT = Path(__file__).resolve().parent.parent

need("django_tasks")

_SETUP = """
import tempfile

import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["django_tasks", "django_tasks_db"],
    DATABASES={{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}}},
    TASKS={tasks!r},
    USE_TZ=True,
)
django.setup()

from asyncwsgi import AsyncMiddleware
from asyncwsgi.executors.django_tasks import DjangoTasksExecutor


STORE = "sqlite:///" + tempfile.mkdtemp() + "/tasks.db"


def app(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]
"""


def _run(tasks: dict[str, object], code: str) -> str:
    script = _SETUP.format(tasks=tasks) + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


DB = {"BACKEND": "django_tasks_db.DatabaseBackend"}


def test_the_task_is_found_by_its_import_path_with_any_queue_names() -> None:
    out = _run(
        {"default": {**DB, "QUEUES": ["reports"]}},
        """
        from django.utils.module_loading import import_string
        from django_tasks.base import Task

        task = import_string("asyncwsgi.executors.django_tasks.run")
        assert isinstance(task, Task), task
        assert task.module_path == "asyncwsgi.executors.django_tasks.run"
        executor = DjangoTasksExecutor("m:app", queue_name="reports")
        AsyncMiddleware(app, paths=["/x"], store=STORE, executor=executor)
        print(executor._task.queue_name)
        """,
    )
    assert out.split() == ["reports"]


def test_an_unknown_queue_is_refused_when_the_middleware_is_built() -> None:
    out = _run(
        {"default": DB},
        """
        from django_tasks.exceptions import InvalidTaskError
        try:
            AsyncMiddleware(app, paths=["/x"], store=STORE,
                            executor=DjangoTasksExecutor("m:app", queue_name="nope"))
        except InvalidTaskError as exc:
            print("refused:", exc)
        """,
    )
    assert out.startswith("refused: Queue 'nope' is not valid")


def test_the_immediate_backend_and_a_memory_store_are_refused() -> None:
    out = _run(
        {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}},
        """
        for store in (None, STORE):
            try:
                AsyncMiddleware(app, paths=["/x"], store=store,
                                executor=DjangoTasksExecutor("m:app"))
            except ValueError as exc:
                print(str(exc).split(":")[0])
        """,
    )
    assert out.splitlines() == [
        "DjangoTasksExecutor needs a shared store that workers can open from its URL (store='redis",
        "the Tasks backend 'default' is the ImmediateBackend, which runs each task inside the "
        "request",
    ]
