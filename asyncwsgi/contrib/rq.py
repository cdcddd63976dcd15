"""Where ``RQExecutor`` and the preloading ``Worker`` (``rq worker -w
asyncwsgi.contrib.rq.Worker``) were first imported from; they live in
:mod:`asyncwsgi.executors.rq` now."""

from ..executors.rq import RQExecutor, Worker, run

__all__ = ["RQExecutor", "Worker", "run"]
