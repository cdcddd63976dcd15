"""Log records that name their task.

Every record asyncwsgi logs about a task (logger ``"asyncwsgi"``) has the task
id in its message and as the record attribute ``task_id``. While a task runs,
:data:`current_task_id` holds its id, in the thread (or Celery worker) that
runs it; :class:`TaskIdFilter` copies it onto every record that passes, so
the app's own records can show it too::

    handler = logging.StreamHandler()
    handler.addFilter(TaskIdFilter())
    handler.setFormatter(logging.Formatter("%(task_id)s %(name)s %(message)s"))

Records outside any task get ``task_id`` = the filter's ``default`` ("-").
No request body, header value or owner value is ever put in a record.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

__all__ = ["TaskIdFilter", "current_task_id", "task_extra"]

#: The id of the task running in this context, or None.
current_task_id: ContextVar[str | None] = ContextVar("asyncwsgi_task_id", default=None)


def task_extra(task_id: str) -> dict[str, Any]:
    """The ``extra`` of asyncwsgi's records about a task."""
    return {"task_id": task_id}


class TaskIdFilter(logging.Filter):
    """Sets ``record.task_id`` to the running task's id (unless the record
    already has one), or to ``default`` outside a task. Never filters out."""

    def __init__(self, default: str | None = "-") -> None:
        super().__init__()
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "task_id", None) is None:
            task_id = current_task_id.get()
            record.task_id = task_id if task_id is not None else self.default
        return True
