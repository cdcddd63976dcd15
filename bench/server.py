"""A gunicorn server (gthread, 1 worker unless told, 8 threads) on 127.0.0.1, stopped by handle."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TypedDict

from . import pinning
from .services import free_port, terminate

ROOT = Path(__file__).resolve().parent.parent


class ServerOptions(TypedDict, total=False):
    """Keyword arguments of ``Server`` beside its name (see there)."""

    workers: int
    store: str | None
    cpus: set[int] | None
    observe: str | None
    extra_env: dict[str, str] | None
    path_first: Path | None


class Server:
    """``name`` is ``kind`` or ``kind:label`` (a second server of the same kind).

    ``workers`` is gunicorn's ``-w``; ``store`` (a store URL) is passed to the
    ``async`` app as ``BENCH_STORE``; ``cpus`` pins the server (see ``pinning``);
    ``observe`` (``"metrics"`` or ``"traced"``) turns the ``async`` app's
    metrics, and tracing, on; ``extra_env`` is added to the server's environment;
    ``path_first`` is a directory put ahead of everything on ``PYTHONPATH`` (one
    holding another version's ``asyncwsgi`` package: see ``bench.versions``),
    and the server must show on ``/_threads`` that it imported ``asyncwsgi``
    from there."""

    def __init__(
        self,
        name: str,
        workers: int = 1,
        store: str | None = None,
        cpus: set[int] | None = None,
        observe: str | None = None,
        extra_env: dict[str, str] | None = None,
        path_first: Path | None = None,
    ) -> None:
        self.name = name
        self.path_first = path_first
        self.kind = kind = name.split(":", 1)[0]
        self.port = free_port()
        env = dict(os.environ, BENCH_APP=kind)
        env.pop("BENCH_STORE", None)
        env.pop("BENCH_OBSERVE", None)
        if observe:
            env["BENCH_OBSERVE"] = observe
        env.pop(pinning.ENV, None)
        env.update(pinning.server_env(cpus))
        if store:
            env["BENCH_STORE"] = store
        env.update(extra_env or {})
        env["PYTHONPATH"] = python_path(path_first, env.get("PYTHONPATH"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "8",
             "-w", str(workers), "-b", f"127.0.0.1:{self.port}", "--keep-alive", "60",
             "--log-level", "warning", "-c", "python:bench.gunicorn_conf", "bench.apps:app"],
            # python -m and gunicorn both put the working directory first on
            # sys.path: the checkout's there would shadow path_first's package.
            cwd=path_first or ROOT,
            env=env,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn ({self.kind}) exited with {self.proc.returncode}")
            try:
                served = self.threads()
            except OSError:
                time.sleep(0.05)
                continue
            if self.path_first is not None:
                check_package(served, self.path_first, f"gunicorn ({self.name})")
            return
        raise RuntimeError(f"gunicorn ({self.kind}) did not answer within {timeout} s")

    def threads(self) -> dict[str, Any]:
        """What the server's ``/_threads`` answers (``bench.apps.threads_view``):
        counts, RSS figures and where its asyncwsgi came from, as JSON."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/_threads")
            served: dict[str, Any] = json.loads(conn.getresponse().read())
            return served
        finally:
            conn.close()

    def stop(self) -> None:
        terminate(self.proc, 15)


def python_path(first: Path | None = None, rest: str | None = None) -> str:
    """``PYTHONPATH`` for a process the benchmark starts: ``first`` (if any),
    the checkout (for ``bench``), then ``rest`` (by default what this process
    was given)."""
    if rest is None:
        rest = os.environ.get("PYTHONPATH")
    parts = [str(first) if first else None, str(ROOT), rest]
    return os.pathsep.join(filter(None, parts))


def check_package(origin: dict[str, Any], expected: Path, who: str) -> None:
    """Fail unless a process's asyncwsgi (``bench.apps.package_origin``, as it
    reported it) was imported from ``expected``, every module of it."""
    module_file = origin.get("asyncwsgi")
    if module_file is None or not Path(module_file).resolve().is_relative_to(expected.resolve()):
        raise RuntimeError(
            f"{who} imported asyncwsgi from {module_file}, not from {expected}: "
            "its figures would be of the wrong version"
        )
    if origin.get("asyncwsgi_strays"):
        raise RuntimeError(
            f"{who} imported {', '.join(origin['asyncwsgi_strays'])} from another copy "
            f"of asyncwsgi than {expected}"
        )


class Servers:
    """Start several servers at once; stop them all at the end."""

    def __init__(self, *names: str, options: dict[str, ServerOptions] | None = None) -> None:
        """``options`` maps a name to keyword arguments for its ``Server``."""
        self.servers: list[Server] = []
        options = options or {}
        try:
            for name in names:
                self.servers.append(Server(name, **options.get(name, {})))
            for server in self.servers:
                server.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __getitem__(self, name: str) -> Server:
        return next(s for s in self.servers if s.name == name)

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
