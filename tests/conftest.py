from __future__ import annotations

import logging

import pytest

from tests.redis_fixture import redis_url  # noqa: F401


@pytest.fixture(autouse=True)
def _quiet_asyncwsgi_errors(caplog: pytest.LogCaptureFixture) -> None:
    # Faults in apps are logged on purpose; tests read them through caplog.
    caplog.set_level(logging.WARNING, logger="asyncwsgi")
