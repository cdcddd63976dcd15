"""Progress as it happens: ``fetch(on_progress=...)`` and ``asyncwsgi get``
follow the status URL's event stream, through a real gunicorn, and fall back
to long polls where the status URL does not stream."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncwsgi.client import Progress, fetch
from tests.servers import ROOT, wsgi_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

STEPS = 6


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[str]:
    with wsgi_server(
        "gunicorn-gthread", "tests.apps.moving_app:application", tmp_path / "log"
    ) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def gunicorn_without_streams(tmp_path: Path) -> Iterator[str]:
    with wsgi_server(
        "gunicorn-gthread", "tests.apps.moving_app:no_streams", tmp_path / "log"
    ) as port:
        yield f"http://127.0.0.1:{port}"


def test_every_change_reaches_on_progress_within_a_second(gunicorn: str) -> None:
    lateness: dict[int, float] = {}

    def seen(progress: Progress) -> None:
        lateness[progress["done"]] = time.time() - float(progress["message"])

    response = fetch(f"{gunicorn}/moves/{STEPS}", method="POST", timeout=60, on_progress=seen)
    assert response.status == 200 and response.body == b"moved %d times\n" % STEPS
    assert sorted(lateness) == list(range(1, STEPS + 1)), lateness
    late = {step: round(delay, 3) for step, delay in lateness.items() if delay > 1.0}
    assert not late, f"changes seen more than a second after they were made: {late}"


def test_without_a_stream_the_client_long_polls(gunicorn_without_streams: str) -> None:
    changes: list[int] = []
    response = fetch(
        f"{gunicorn_without_streams}/moves/5",
        method="POST",
        timeout=60,
        on_progress=lambda progress: changes.append(progress["done"]),
    )
    assert response.status == 200 and response.body == b"moved 5 times\n"
    # Long polls answer when the task ends or their wait is over: some changes.
    assert changes and changes == sorted(changes) and changes[-1] < 5, changes


def test_asyncwsgi_get_shows_the_progress_of_a_short_task(gunicorn: str) -> None:
    # Two changes in 1.6 s: a submission that waited two seconds showed none.
    result = subprocess.run(
        [sys.executable, "-m", "asyncwsgi", "get", f"{gunicorn}/moves/2", "-X", "POST"],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"moved 2 times\n"
    lines = [line for line in result.stderr.splitlines() if line.startswith(b"progress: ")]
    assert [line.split()[1] for line in lines] == [b"1/2", b"2/2"], result.stderr
