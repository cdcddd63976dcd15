"""A real Redis for the tests: one ``redis-server`` per test session.

Without ``redis-server`` on PATH the tests that need it are skipped, except
in CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from bench.services import RedisServer


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a redis-server started for this session."""
    executable = shutil.which("redis-server")
    if executable is None:
        message = "redis-server is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        server = RedisServer(executable)
    except RuntimeError as exc:
        pytest.fail(f"redis-server did not start: {exc}")
    with server:
        yield server.url(0)
