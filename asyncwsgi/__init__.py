"""Turn long WSGI requests into background tasks: 202 Accepted and a status URL."""

from .executors import Executor, ThreadExecutor
from .middleware import AsyncMiddleware
from .runner.handle import TaskHandle
from .stores import MemoryStore, SQLiteStore, Store, open_store
from .task import Result, TaskRecord

__version__ = "0.1.0"

__all__ = [
    "AsyncMiddleware",
    "Executor",
    "MemoryStore",
    "Result",
    "SQLiteStore",
    "Store",
    "TaskHandle",
    "TaskRecord",
    "ThreadExecutor",
    "__version__",
    "open_store",
]
