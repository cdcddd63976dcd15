"""The task side: running one job, storing its result, keeping its lease.

``run`` runs one job with the app and hands what it answers to the store.
"""

from __future__ import annotations

from .run import TaskRunner

__all__ = ["TaskRunner"]
