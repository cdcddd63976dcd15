"""Turn long WSGI requests into background tasks: 202 Accepted and a status URL."""

from .executor import Executor, ThreadExecutor
from .memory import MemoryStore
from .middleware import AsyncMiddleware
from .sqlite import SQLiteStore
from .store import Result, Store, TaskRecord
from .task import TaskHandle

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
]
