"""Real WSGI servers in a subprocess on 127.0.0.1, for end-to-end tests:
gunicorn (sync or gthread workers) and waitress, serving an app by its
import string with this checkout first on ``PYTHONPATH``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from bench.services import free_port, terminate, wait_port

ROOT = Path(__file__).resolve().parent.parent

SERVERS = {
    "gunicorn-sync": ["gunicorn", "-w", "1"],
    "gunicorn-gthread": ["gunicorn", "-w", "1", "-k", "gthread", "--threads", "4"],
    "waitress": ["waitress"],
}


def server_command(kind: str, app: str, port: int) -> list[str]:
    base = SERVERS[kind]
    if base[0] == "waitress":
        return [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", app]
    return [
        sys.executable,
        "-m",
        *base,
        "-b",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "--graceful-timeout",
        "5",
        "-c",
        "python:tests.gunicorn_conf",
        app,
    ]


@contextmanager
def wsgi_server(
    kind: str,
    app: str,
    log: Path,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> Iterator[int]:
    """Serve ``app`` with the server ``kind`` (a key of ``SERVERS``); yields
    the port once it accepts connections, stops the server on exit. Its
    output goes to ``log``."""
    port = free_port() if port is None else port
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    with open(log, "ab") as out:
        process = subprocess.Popen(
            server_command(kind, app, port), cwd=ROOT, env=full_env, stdout=out, stderr=out
        )
        try:
            try:
                wait_port(port, process, timeout=30)
            except RuntimeError as exc:
                raise AssertionError(f"{kind} did not start: {log.read_text()}") from exc
            yield port
        finally:
            terminate(process, timeout=20)
