"""Where ``Executor`` and ``ThreadExecutor`` were first imported from; they
live in :mod:`asyncwsgi.executors` now."""

from .executors import Executor, ThreadExecutor

__all__ = ["Executor", "ThreadExecutor"]
