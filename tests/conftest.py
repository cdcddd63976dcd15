from __future__ import annotations

import logging
from typing import Any

import pytest

from asyncwsgi import AsyncMiddleware
from tests.helpers import Clock
from tests.redis_fixture import redis_cluster_url, redis_sentinel_url, redis_url  # noqa: F401


@pytest.fixture(autouse=True)
def _quiet_asyncwsgi_errors(caplog: pytest.LogCaptureFixture) -> None:
    # Faults in apps are logged on purpose; tests read them through caplog.
    caplog.set_level(logging.WARNING, logger="asyncwsgi")


@pytest.fixture
def clock() -> Clock:
    """A clock the test moves (:class:`tests.helpers.Clock`); the contract
    suite's stores read it (``store.clock``)."""
    return Clock()


@pytest.fixture
def wrap():
    """Make middlewares (``paths=["/work/*"]`` unless given) closed after the test."""
    made: list[AsyncMiddleware] = []

    def make(app: Any, **options: Any) -> AsyncMiddleware:
        options.setdefault("paths", ["/work/*"])
        mw = AsyncMiddleware(app, **options)
        made.append(mw)
        return mw

    yield make
    for mw in made:
        mw.close(timeout=10)
