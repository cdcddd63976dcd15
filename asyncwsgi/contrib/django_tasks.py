"""Where ``DjangoTasksExecutor`` was first imported from; it lives in
:mod:`asyncwsgi.executors.django_tasks` now."""

from typing import Any

from ..executors import django_tasks as _home
from ..executors.django_tasks import DjangoTasksExecutor

__all__ = ["DjangoTasksExecutor"]


def __getattr__(name: str) -> Any:
    # ``run``, the task, is made on first use in its home module.
    return getattr(_home, name)
