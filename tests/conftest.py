from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _quiet_asyncwsgi_errors(caplog: pytest.LogCaptureFixture) -> None:
    # Faults in apps are logged on purpose; tests read them through caplog.
    caplog.set_level(logging.WARNING, logger="asyncwsgi")
