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
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

__all__ = [
    "Gunicorn",
    "RedisClusterServers",
    "RedisReplicated",
    "RedisSentinel",
    "RssSampler",
    "RedisServer",
    "TLSFiles",
    "free_port",
    "redis_cli",
    "stop_group",
    "terminate",
    "wait_port",
]


def celery_app(name: str, broker: str, backend: str | None = None) -> Any:
    """The benchmark's one Celery configuration, for every scenario's apps
    and workers: JSON, one task fetched at a time."""
    from celery import Celery

    app = Celery(name, broker=broker, backend=backend)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )
    return app


def commands_processed(client: Any) -> int:
    """The commands a Redis server has run so far (``INFO stats``, those run
    inside scripts included); the INFO call counts itself. (The client
    through Any: redis-py before 6 annotates ``info`` as maybe awaitable.)"""
    return int(client.info("stats")["total_commands_processed"])


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
            self._wait_loaded()
        except BaseException:
            self.stop()
            raise

    def _wait_loaded(self, timeout: float = 10.0) -> None:
        """Return once the server answers PING. A server started again on an
        append-only file accepts connections before it has read the file back,
        and answers every command with LOADING until then: the store is still
        unavailable, so the outage a test made has not ended yet."""
        deadline = time.monotonic() + timeout
        while True:
            with socket.create_connection(("127.0.0.1", self.port), 1.0) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis on port {self.port} still loading after {timeout} s")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; :meth:`start` brings it back."""
        self.proc.kill()
        self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a slow link, a
        long fsync); :meth:`resume` goes on where it stopped."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot end
        terminate(self.proc)
        self._directory.cleanup()


def redis_cli(port: int, *args: str, cli: str = "redis-cli", timeout: float = 5.0) -> str:
    """The answer of ``redis-cli -p <port> <args>`` as text ('' when the server
    does not answer)."""
    try:
        return subprocess.run(
            [cli, "-p", str(port), *args], capture_output=True, text=True, timeout=timeout
        ).stdout
    except subprocess.TimeoutExpired:
        return ""


def _wait_until(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout} s")
        time.sleep(0.1)


def _link_up(port: int, cli: str) -> bool:
    return "master_link_status:up" in redis_cli(port, "info", "replication", cli=cli)


class TLSFiles:
    """A throwaway certificate authority and a certificate for 127.0.0.1
    signed by it, made with the ``openssl`` command in ``directory``, and the
    options that make a redis-server (or a sentinel) listen with TLS on
    another port too."""

    def __init__(self, directory: Path, openssl: str = "openssl") -> None:
        self.ca = directory / "ca.crt"
        self.cert = directory / "server.crt"
        self.key = directory / "server.key"
        ca_key, csr, ext = directory / "ca.key", directory / "server.csr", directory / "san.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n")
        for args in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
             "-out", str(self.ca), "-days", "2", "-subj", "/CN=asyncwsgi test CA"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
             "-out", str(csr), "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(self.cert), "-days", "2", "-extfile", str(ext)],
        ):  # fmt: skip
            subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    def options(self, tls_port: int) -> list[str]:
        """redis-server's options for TLS on ``tls_port`` (clients need no
        certificate of their own)."""
        return [
            "--tls-port", str(tls_port), "--tls-cert-file", str(self.cert),
            "--tls-key-file", str(self.key), "--tls-ca-cert-file", str(self.ca),
            "--tls-auth-clients", "no",
        ]  # fmt: skip


class RedisSentinel(_Service):
    """One ``redis-server --sentinel`` on a free port watching the primary at
    127.0.0.1:``primary_port`` as ``service`` (quorum 1: it decides alone),
    in its own temporary directory (Sentinel rewrites its file)."""

    def __init__(
        self,
        primary_port: int,
        service: str = "svc",
        executable: str = "redis-server",
        cli: str = "redis-cli",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 4000,
        tls: TLSFiles | None = None,
    ) -> None:
        """With ``tls``, the sentinel also listens with TLS on :attr:`tls_port`
        and speaks TLS to Redis (``primary_port`` is then the primary's TLS port)."""
        self.service = service
        self.cli = cli
        self._directory = tempfile.TemporaryDirectory(prefix="asyncwsgi-sentinel-")
        self.port = free_port()
        self.tls_port: int | None = None
        conf = Path(self._directory.name) / "sentinel.conf"
        text = (
            f"port {self.port}\nbind 127.0.0.1\ndir {self._directory.name}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary_port} 1\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
        )
        if tls is not None:
            self.tls_port = free_port()
            options = tls.options(self.tls_port)
            text += "".join(f"{options[i][2:]} {options[i + 1]}\n" for i in range(0, 10, 2))
            text += "tls-replication yes\n"
        conf.write_text(text)
        self.proc = subprocess.Popen(
            [executable, str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_port(self.port, self.proc)
        except BaseException:
            self.stop()
            raise

    def primary_port(self) -> int | None:
        """The port of the primary this sentinel names now (None: it names none)."""
        answer = redis_cli(
            self.port, "sentinel", "get-master-addr-by-name", self.service, cli=self.cli
        ).split()
        return int(answer[1]) if len(answer) == 2 and answer[1].isdigit() else None

    def replicas_seen(self) -> int:
        """How many replicas of the primary this sentinel knows of."""
        answer = redis_cli(self.port, "sentinel", "replicas", self.service, cli=self.cli)
        return answer.split("\n").count("name")

    def stop(self) -> None:
        terminate(self.proc)
        self._directory.cleanup()


class RedisReplicated(_Service):
    """A primary, ``replicas`` replicas of it and one :class:`RedisSentinel`,
    each on a free port of 127.0.0.1 without persistence; returns once every
    replica is in sync and the sentinel knows them all.

    >>> with RedisReplicated(2) as group:
    ...     group.replicas[0].pause(); group.primary.kill()
    """

    def __init__(
        self,
        replicas: int = 2,
        executable: str = "redis-server",
        cli: str = "redis-cli",
        *,
        service: str = "svc",
        down_after_ms: int = 1000,
        timeout: float = 30.0,
        tls: TLSFiles | None = None,
    ) -> None:
        """With ``tls``, every server and the sentinel also listen with TLS
        (replication and the sentinel's checks go over it), and :meth:`url`
        is the ``rediss+sentinel://`` one."""
        self.cli = cli
        self.tls = tls
        self.replicas: list[RedisServer] = []
        self.sentinel: RedisSentinel | None = None
        # Each server's TLS port (with tls), by its plain port.
        self.tls_ports: dict[int, int] = {}
        self.primary = self._server(executable)
        try:
            for _ in range(replicas):
                self.replicas.append(
                    self._server(
                        executable, "--replicaof", "127.0.0.1", str(self._port(self.primary))
                    )
                )
            self.wait_synced(timeout)
            self.sentinel = RedisSentinel(
                self._port(self.primary), service, executable, cli,
                down_after_ms=down_after_ms, tls=tls,
            )  # fmt: skip
            _wait_until(
                lambda: self._sentinel().replicas_seen() >= replicas,
                timeout,
                "the sentinel did not see every replica",
            )
        except BaseException:
            self.stop()
            raise

    def _sentinel(self) -> RedisSentinel:
        assert self.sentinel is not None
        return self.sentinel

    def _server(self, executable: str, *options: str) -> RedisServer:
        if self.tls is None:
            return RedisServer(executable, *options)
        tls_port = free_port()
        server = RedisServer(
            executable, *self.tls.options(tls_port), "--tls-replication", "yes", *options
        )
        self.tls_ports[server.port] = tls_port
        return server

    def _port(self, server: RedisServer) -> int:
        """The port others reach ``server`` by (its TLS port, with tls)."""
        return self.tls_ports.get(server.port, server.port)

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, *self.replicas]

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Return once every replica's link to its primary is up."""
        _wait_until(
            lambda: all(_link_up(r.port, self.cli) for r in self.replicas if r.proc.poll() is None),
            timeout,
            "the replicas were not in sync",
        )

    def url(self, db: int = 0, query: str = "") -> str:
        """``redis+sentinel://127.0.0.1:<sentinel>/<service>/<db>[?query]``
        (``rediss+sentinel://`` to the sentinel's TLS port, with tls)."""
        sentinel = self._sentinel()
        if self.tls is not None:
            ca = f"ssl_ca_certs={self.tls.ca}"
            tail = f"?{ca}&{query}" if query else f"?{ca}"
            return f"rediss+sentinel://127.0.0.1:{sentinel.tls_port}/{sentinel.service}/{db}{tail}"
        tail = f"?{query}" if query else ""
        return f"redis+sentinel://127.0.0.1:{sentinel.port}/{sentinel.service}/{db}{tail}"

    def wait_failover(self, timeout: float = 20.0) -> RedisServer:
        """The server the sentinel promoted, once it names another than the
        first primary and that server answers as a primary."""
        sentinel = self._sentinel()
        found: list[RedisServer] = []

        def promoted() -> bool:
            port = sentinel.primary_port()
            for server in self.replicas:
                if self._port(server) == port and "role:master" in redis_cli(
                    server.port, "info", "replication", cli=self.cli
                ):
                    found.append(server)
                    return True
            return False

        _wait_until(promoted, timeout, "no replica was promoted")
        return found[0]

    def stop(self) -> None:
        if self.sentinel is not None:
            self.sentinel.stop()
        for server in self.servers:
            server.stop()


class RedisClusterServers(_Service):
    """A Redis Cluster of ``masters`` redis-servers, each with ``replicas``
    replicas (no persistence), on free ports, each in its own temporary
    directory, its slots assigned by ``redis-cli --cluster create``; stopped
    by :meth:`stop` or at the end of a ``with`` block. ``node_timeout`` (ms)
    is how long a node may be unreachable before the cluster fails it over."""

    def __init__(
        self,
        masters: int = 3,
        executable: str = "redis-server",
        cli: str = "redis-cli",
        timeout: float = 30.0,
        *,
        replicas: int = 0,
        node_timeout: int = 5000,
    ) -> None:
        self.cli = cli
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(masters * (1 + replicas)):
                # The bus port by name: the default (port + 10000) may not exist.
                self.nodes.append(
                    RedisServer(
                        executable,
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        str(free_port()),
                        "--cluster-node-timeout",
                        str(node_timeout),
                    )  # fmt: skip
                )
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-replicas", str(replicas),
                 "--cluster-yes"],
                check=True, capture_output=True, timeout=timeout,
            )  # fmt: skip
            # Ready when every node serves all the slots and sees every
            # replica attached: "--cluster create" returns before its
            # CLUSTER REPLICATE has reached every node by gossip, and until
            # then a node lists a replica as a primary without slots.
            _wait_until(
                lambda: all(
                    self._ready(node.port) and self._replicas_seen(node.port, masters * replicas)
                    for node in self.nodes
                ),
                timeout,
                "the cluster was not ready",
            )
            _wait_until(
                lambda: all(
                    _link_up(port, cli) for port, (_, primary) in self.roles().items() if primary
                ),
                timeout,
                "the cluster's replicas were not in sync",
            )
        except BaseException:
            self.stop()
            raise

    def _ready(self, port: int) -> bool:
        info = redis_cli(port, "cluster", "info", cli=self.cli)
        return "cluster_state:ok" in info and "cluster_slots_assigned:16384" in info

    def _replicas_seen(self, port: int, expected: int) -> bool:
        roles = self.roles(port)
        return len(roles) == len(self.nodes) and (
            sum(primary is not None for _, primary in roles.values()) == expected
        )

    def roles(self, port: int | None = None) -> dict[int, tuple[str, int | None]]:
        """Each live node's port -> (node id, the port of the primary it
        replicates, or None for a primary), as the node at ``port`` (the first
        live one by default) sees the cluster."""
        if port is None:
            port = next(n.port for n in self.nodes if n.proc.poll() is None)
        ids: dict[str, int] = {}
        rows: list[tuple[int, str, str, str]] = []
        for line in redis_cli(port, "cluster", "nodes", cli=self.cli).splitlines():
            fields = line.split()
            if len(fields) < 8 or "fail" in fields[2].split(","):
                continue
            node_port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            ids[fields[0]] = node_port
            rows.append((node_port, fields[0], fields[2], fields[3]))
        return {
            node_port: (node_id, None if "master" in flags else ids.get(master))
            for node_port, node_id, flags, master in rows
        }

    def primary_of_key(self, key: str) -> int:
        """The port of the primary that serves ``key``'s slot now."""
        port = next(n.port for n in self.nodes if n.proc.poll() is None)
        slot = int(redis_cli(port, "cluster", "keyslot", key, cli=self.cli).strip())
        for line in redis_cli(port, "cluster", "nodes", cli=self.cli).splitlines():
            fields = line.split()
            if len(fields) < 9 or "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                first, _, last = span.partition("-")
                if first.isdigit() and int(first) <= slot <= int(last or first):
                    return int(fields[1].split("@")[0].rsplit(":", 1)[1])
        raise RuntimeError(f"no primary serves the slot of {key!r}")

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

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


def descendants(pid: int) -> list[int]:
    """Every process under ``pid``, children first (Linux)."""
    found = children(pid)
    for child in list(found):
        found.extend(descendants(child))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time so far of ``pids``, every thread included
    (``/proc/<pid>/stat``; a process gone counts nothing)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


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
        return [pid for root in self.roots for pid in (root, *descendants(root))]

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
