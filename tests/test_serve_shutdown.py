"""``asyncwsgi serve`` stops within its grace period on SIGTERM, even with a
task that never returns, and says what it waits for."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.services import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_sigterm_stops_serve_within_the_grace_period_despite_a_hung_task():
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncwsgi", "serve", "tests.apps.hang_app:app",
         "--path", "/work/*", "--port", str(port), "--graceful-timeout", "2"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_port(port, proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/work/hang")
        assert conn.getresponse().status == 202
        conn.close()
        time.sleep(0.3)  # the task runs
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        took = time.monotonic() - started
        assert proc.returncode == 0
        assert 1.5 < took < 8  # the grace period, then out
        assert b"waiting up to 2 s for 1 unfinished task" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
