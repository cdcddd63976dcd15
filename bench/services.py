"""Throwaway services on 127.0.0.1 for the benchmark and the test suite: free
ports, a redis-server without persistence, and stopping a process group.

Only the standard library, so that the tests can import it without the
benchmark's dependencies.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType

__all__ = ["RedisServer", "free_port", "stop_group", "terminate", "wait_port"]


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


class RedisServer:
    """A redis-server on a free port with no persistence, in its own temporary
    directory, stopped by :meth:`stop` or at the end of a ``with`` block.

    >>> with RedisServer() as redis:
    ...     store = open_store(redis.url(1))
    """

    def __init__(self, executable: str = "redis-server") -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="asyncwsgi-redis-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self._directory.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_port(self.port, self.proc)
        except BaseException:
            self.stop()
            raise

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        terminate(self.proc)
        self._directory.cleanup()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
