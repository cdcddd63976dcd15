"""Executors: where accepted tasks run.

The interface (:class:`Executor`), the default thread pool
(:class:`ThreadExecutor`) and the base of the executors whose workers are
other processes (:class:`RemoteExecutor`, with the worker's side in
``worker``). Each engine has its own module, imported only when used:
``asyncwsgi.executors.celery``, ``.rq``, ``.django_tasks``.
"""

from .base import Executor, ExecutorShutDown
from .remote import RemoteExecutor
from .threads import ThreadExecutor

__all__ = ["Executor", "ExecutorShutDown", "RemoteExecutor", "ThreadExecutor"]
