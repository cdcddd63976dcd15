"""Throwaway services on 127.0.0.1 for the benchmark and the test suite: free
ports, a redis-server without persistence, a gunicorn server, stopping a
process group, and sampling the resident memory of a process tree.

Only the standard library, so that the tests can import it without the
benchmark's dependencies.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TypeVar

__all__ = [
    "Gunicorn",
    "RedisClusterServers",
    "RssSampler",
    "RedisServer",
    "free_port",
    "stop_group",
    "terminate",
    "wait_port",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 10.0
) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; raise RuntimeError
    if ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing accepted on port {port} within {timeout} s") from None
            time.sleep(0.05)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; returns once the process is gone."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """End a process started with ``start_new_session=True`` and all its
    children: SIGTERM, then SIGKILL after ``timeout``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    try:  # the leader is gone or stuck: its children go too
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class _Service:
    """Stopped by :meth:`stop`, or at the end of a ``with`` block."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


_S = TypeVar("_S", bound=_Service)


class RedisServer(_Service):
    """A redis-server on a free port with no persistence, in its own temporary
    directory, stopped by :meth:`stop` or at the end of a ``with`` block.

    >>> with RedisServer() as redis:
    ...     store = open_store(redis.url(1))
    """

    def __init__(self, executable: str = "redis-server", *options: str) -> None:
        """``options`` are more of redis-server's command line (later ones
        win: ``"--appendonly", "yes"`` keeps the data across :meth:`kill`)."""
        self._directory = tempfile.TemporaryDirectory(prefix="asyncwsgi-redis-")
        self.port = free_port()
        self._args = [
            executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", self._directory.name, *options,
        ]  # fmt: skip
        self.start()

    def start(self) -> None:
        """Start the server (again, after :meth:`kill`: same port, same directory)."""
        self.proc = subprocess.Popen(
            self._args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_port(self.port, self.proc)
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; :meth:`start` brings it back."""
        self.proc.kill()
        self.proc.wait()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        terminate(self.proc)
        self._directory.cleanup()


class RedisClusterServers(_Service):
    """A Redis Cluster of ``masters`` redis-servers (no replicas, no
    persistence) on free ports, each in its own temporary directory, its slots
    assigned by ``redis-cli --cluster create``; stopped by :meth:`stop` or at
    the end of a ``with`` block."""

    def __init__(
        self,
        masters: int = 3,
        executable: str = "redis-server",
        cli: str = "redis-cli",
        timeout: float = 30.0,
    ) -> None:
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(masters):
                # The bus port by name: the default (port + 10000) may not exist.
                self.nodes.append(
                    RedisServer(
                        executable,
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        str(free_port()),
                        "--cluster-node-timeout",
                        "5000",
                    )  # fmt: skip
                )
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0",
                 "--cluster-yes"],
                check=True, capture_output=True, timeout=timeout,
            )  # fmt: skip
            deadline = time.monotonic() + timeout
            while not all(self._ready(cli, node.port) for node in self.nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster was not ready within {timeout} s")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _ready(cli: str, port: int) -> bool:
        info = subprocess.run(
            [cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True, timeout=5
        ).stdout
        return "cluster_state:ok" in info and "cluster_slots_assigned:16384" in info

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class Gunicorn(_Service):
    """``python -m gunicorn <args> <app>`` on a free port of 127.0.0.1, with
    ``env`` added to the environment and the repository first on the path;
    its output goes to ``log``. Stopped by :meth:`stop` (SIGTERM, then
    SIGKILL) or at the end of a ``with`` block."""

    def __init__(
        self,
        app: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        root = Path(__file__).resolve().parent.parent
        self.port = free_port()
        environ = dict(os.environ)
        environ.update(env or {})
        environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(root), environ.get("PYTHONPATH")])
        )
        self._log = open(log, "wb") if log is not None else None  # noqa: SIM115
        output = self._log if self._log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *args, "-b", f"127.0.0.1:{self.port}",
             "--log-level", "warning", "-c", "python:bench.gunicorn_conf", app],
            cwd=root, env=environ, stdout=output, stderr=output,
        )  # fmt: skip
        try:
            wait_port(self.port, self.proc, timeout)
        except BaseException:
            self.stop()
            raise

    def pids(self) -> list[int]:
        """The master and its workers."""
        return [self.proc.pid, *children(self.proc.pid)]

    def stop(self) -> None:
        terminate(self.proc, 20)
        if self._log is not None:
            self._log.close()


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as file:
                found.extend(int(child) for child in file.read().split())
        except FileNotFoundError:
            continue
    return found


def rss(pid: int) -> int:
    """The resident set size of ``pid`` in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class RssSampler(_Service):
    """Samples the resident memory of ``roots`` and all their descendants
    every ``interval`` seconds in a thread, from construction to :meth:`stop`;
    :attr:`peaks` maps each pid seen to its largest sample, in bytes."""

    def __init__(self, *roots: int, interval: float = 0.05) -> None:
        self.roots = roots
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids = list(self.roots)
        for pid in pids:
            pids.extend(children(pid))
        return pids

    def _run(self) -> None:
        while True:
            for pid in self._tree():
                size = rss(pid)
                if size > self.peaks.get(pid, 0):
                    self.peaks[pid] = size
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)
