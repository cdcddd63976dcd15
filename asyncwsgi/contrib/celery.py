"""Where ``CeleryExecutor`` was first imported from; it lives in
:mod:`asyncwsgi.executors.celery` now."""

from ..environ import json_environ
from ..executors.celery import TASK_NAME, CeleryExecutor
from ..executors.worker import load_app

__all__ = ["TASK_NAME", "CeleryExecutor", "json_environ", "load_app"]
