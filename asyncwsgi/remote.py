"""Where ``RemoteExecutor`` and ``load_app`` were first imported from; they
live in :mod:`asyncwsgi.executors` now."""

from .executors.remote import RemoteExecutor
from .executors.worker import load_app

__all__ = ["RemoteExecutor", "load_app"]
