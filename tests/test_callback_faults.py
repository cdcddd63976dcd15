"""Completion callbacks against hostile input and hostile receivers, through
real servers and real stores: Callback-URL forms a receiver could read
outside the allowed prefix, and receivers that answer one byte a second."""

from __future__ import annotations

import http.client
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from asyncwsgi.middleware import CALLBACK_HEADER
from tests.helpers import unavailable
from tests.servers import wsgi_server
from tests.test_callbacks import SECRET, Receiver, receiving

ROOT = Path(__file__).resolve().parent.parent


def _post(port: int, path: str, callback: bytes | str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        # Bytes as they are: a str would be encoded as latin-1 by http.client.
        conn.putheader("Callback-URL", callback)
        conn.putheader("Content-Length", "0")
        conn.putheader("Connection", "close")
        conn.endheaders()
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: Any) -> Iterator[tuple[int, str, Receiver]]:
    """gunicorn (gthread) serving tests.apps.hostile_app on SQLite with
    callbacks allowed under a real receiver's /hooks/."""
    receiver = Receiver()
    tmp = Path(tmp_path_factory.mktemp("callback-forms"))
    with receiving(receiver) as hooks:
        env = {
            "ASYNCWSGI_TEST_STORE": "sqlite:///" + str(tmp / "tasks.db"),
            "ASYNCWSGI_TEST_CALLBACK_ALLOW": hooks,
            "ASYNCWSGI_TEST_CALLBACK_SECRET": SECRET,
        }
        app = "tests.apps.hostile_app:application"
        with wsgi_server("gunicorn-gthread", app, tmp / "log", env) as port:
            yield port, hooks, receiver


REFUSED = [
    pytest.param("x\\..\\..\\admin", id="backslashes"),
    pytest.param("x\\admin", id="one-backslash"),
    pytest.param("x%5c..%5cadmin", id="encoded-backslashes"),
    pytest.param("x%5C..%5Cadmin", id="encoded-backslashes-upper"),
    pytest.param("%2e%2e/admin", id="encoded-dots"),
    pytest.param(".%2E/admin", id="half-encoded-dots"),
    pytest.param("%2E%2e/admin", id="mixed-case-dots"),
    pytest.param("%252e%252e/admin", id="double-encoded-dots"),
    pytest.param("x/%2e/y", id="encoded-single-dot"),
    pytest.param("x/..;/admin", id="dots-with-a-parameter"),
    pytest.param("x%2f..%2fadmin", id="encoded-slashes"),
    pytest.param("café", id="non-ascii-latin-1"),
    pytest.param("café".encode(), id="non-ascii-utf-8"),
    pytest.param("x\t/../admin", id="tab"),
]


@pytest.mark.parametrize("tail", REFUSED)
def test_a_callback_url_a_receiver_may_read_elsewhere_is_400(
    hooked: tuple[int, str, Receiver], tail: str | bytes
) -> None:
    port, hooks, receiver = hooked
    url = hooks.encode("latin-1") + tail if isinstance(tail, bytes) else hooks + tail
    status, headers, body = _post(port, "/work/x", url)
    assert status == 400, body
    assert CALLBACK_HEADER not in headers
    assert b"Callback-URL" in body


def test_percent_encoded_non_ascii_is_delivered_as_sent(
    hooked: tuple[int, str, Receiver],
) -> None:
    port, hooks, receiver = hooked
    url = hooks + "caf%C3%A9?q=%E2%9C%93"
    status, headers, _ = _post(port, "/work/x", url)
    assert status == 202 and headers[CALLBACK_HEADER] == url
    deadline = time.monotonic() + 20
    while not any(d.path == "/hooks/caf%C3%A9?q=%E2%9C%93" for d in receiver.deliveries):
        assert time.monotonic() < deadline, [d.path for d in receiver.deliveries]
        time.sleep(0.05)
    # Nothing refused above reached the receiver: every delivery is under /hooks/.
    assert all(d.path.startswith("/hooks/") for d in receiver.deliveries)


# -- receivers that answer one byte a second ------------------------------------------


@dataclass
class Attempt:
    opened: float
    closed: float | None = None
    webhook_id: str = ""


@dataclass
class Trickler:
    """A receiver on a real socket that reads each POST whole, then answers
    ``HTTP/1.1 200 OOO...`` one byte every ``interval`` seconds (the reason
    phrase ``length`` bytes long), for as long as the caller stays."""

    interval: float = 1.0
    length: int = 120
    attempts: list[Attempt] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept)]
        self.threads[0].start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            attempt = Attempt(time.monotonic())
            with self.lock:
                self.attempts.append(attempt)
            thread = threading.Thread(target=self._answer, args=(conn, attempt))
            self.threads.append(thread)
            thread.start()

    def _answer(self, conn: socket.socket, attempt: Attempt) -> None:
        try:
            conn.settimeout(0.1)
            raw = b""
            while b"\r\n\r\n" not in raw and not self.stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                raw += chunk
            for line in raw.split(b"\r\n"):
                if line.lower().startswith(b"webhook-id:"):
                    attempt.webhook_id = line.split(b":", 1)[1].strip().decode()
            answer = b"HTTP/1.1 200 " + b"O" * self.length + b"\r\n\r\n"
            for byte in answer:
                if self._gone_within(conn, self.interval):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
            self._gone_within(conn, 3600)
        finally:
            attempt.closed = time.monotonic()
            conn.close()

    def _gone_within(self, conn: socket.socket, seconds: float) -> bool:
        """Wait ``seconds``; True as soon as the caller closes its end (or
        the receiver is stopped)."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if select.select([conn], [], [], min(left, 0.05))[0]:
                try:
                    if conn.recv(65536, socket.MSG_PEEK) == b"":
                        return True
                except OSError:
                    return True
                time.sleep(0.01)  # readable with data: the caller is still there
        return True

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        self.listener.close()


@contextmanager
def trickling(count: int, **options: Any) -> Iterator[list[Trickler]]:
    made = [Trickler(**options) for _ in range(count)]
    try:
        yield made
    finally:
        for trickler in made:
            trickler.close()


@contextmanager
def bounded_server(
    tmp_path: Path, store: str, allow: list[str], claim_lease: float, attempt_timeout: float
) -> Iterator[int]:
    env = {
        "ASYNCWSGI_TEST_STORE": store,
        "ASYNCWSGI_TEST_CALLBACK_ALLOW": " ".join(allow),
        "ASYNCWSGI_TEST_CALLBACK_SECRET": SECRET,
        "ASYNCWSGI_TEST_CLAIM_LEASE": str(claim_lease),
        "ASYNCWSGI_TEST_ATTEMPT_TIMEOUT": str(attempt_timeout),
    }
    app = "tests.apps.hostile_app:application"
    with wsgi_server("gunicorn-gthread", app, tmp_path / "gunicorn.log", env) as port:
        yield port


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "tasks.db")
    import redis

    url: str = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.mark.slow
def test_an_attempt_has_a_total_deadline_and_a_live_process_never_overlaps_it(
    tmp_path: Path, store: str
) -> None:
    # A claim of 4 s, attempts of at most 2 s; the receiver would take 120 s
    # to answer. Each attempt must end by its deadline, and no attempt may
    # start while another of the same delivery is still open (the claim
    # lapsing under a running attempt used to start a second one).
    with trickling(1) as (slow,):
        with bounded_server(tmp_path, store, [slow.url], claim_lease=4, attempt_timeout=2) as port:
            status, _, _ = _post(port, "/work/x", slow.url + "x")
            assert status == 202
            # Until the third attempt opens (about 8 s; the two before it
            # have closed by then, or the checks below fail).
            deadline = time.monotonic() + 30
            while len(slow.attempts) < 3:
                assert time.monotonic() < deadline, slow.attempts
                time.sleep(0.05)
        attempts = list(slow.attempts)
    assert len(attempts) >= 3, attempts  # tried, timed out, tried again
    assert len({a.webhook_id for a in attempts}) == 1
    for attempt in attempts[:-1]:
        assert attempt.closed is not None
        assert attempt.closed - attempt.opened < 2 + 1.0, attempts
    for before, after in zip(attempts, attempts[1:], strict=False):
        assert before.closed is not None and after.opened >= before.closed - 0.05, attempts


@pytest.mark.slow
def test_slow_receivers_do_not_delay_a_healthy_one(tmp_path: Path, store: str) -> None:
    healthy = Receiver()
    with trickling(6) as slow, receiving(healthy) as hooks:
        allow = [hooks] + [t.url for t in slow]
        with bounded_server(tmp_path, store, allow, claim_lease=60, attempt_timeout=10) as port:
            for trickler in slow:
                for i in range(3):
                    assert _post(port, "/work/x", trickler.url + str(i))[0] == 202
            deadline = time.monotonic() + 10
            while not all(t.attempts for t in slow):
                assert time.monotonic() < deadline, [len(t.attempts) for t in slow]
                time.sleep(0.05)
            sent = time.monotonic()
            assert _post(port, "/work/y", hooks + "y")[0] == 202
            healthy.wait_for(1, timeout=10)
            took = healthy.deliveries[0].at - time.time() + time.monotonic() - sent
    # Six receivers trickling (each with an attempt open) leave a healthy one
    # its callback at once: well within one attempt's deadline (10 s).
    assert took < 5.0, took


@pytest.mark.slow
def test_a_delivery_sent_whose_record_was_lost_is_not_sent_again() -> None:
    # The receiver accepts, then Redis stops answering before the sender can
    # record it, until the claim has lapsed. When Redis is back the same
    # process claims the delivery again: it records it instead of sending it.
    from werkzeug.test import Client

    from asyncwsgi import AsyncMiddleware
    from bench.services import RedisServer
    from tests.helpers import program, wait_done

    redis = RedisServer(program("redis-server"))
    app: AsyncMiddleware | None = None
    try:

        class Pausing(Receiver):
            def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
                redis.pause()  # before the answer: the record cannot follow it
                return super().__call__(environ, start_response)

        receiver = Pausing()
        with receiving(receiver) as hooks:
            app = AsyncMiddleware(
                lambda environ, start_response: (start_response("200 OK", []), [b"ok"])[1],
                paths=["/work/*"],
                store=redis.url(0) + "?socket_timeout=0.5&socket_connect_timeout=0.5",
                callback_allow=[hooks],
                callback_secret=SECRET,
            )
            assert app.callbacks is not None
            app.callbacks.claim_lease = 4.0
            app.callbacks.attempt_timeout = 2.0
            client = Client(app)
            location = client.post("/work/x", headers={"Callback-URL": hooks + "x"}).headers[
                "Location"
            ]
            receiver.wait_for(1, timeout=10)
            time.sleep(6)  # past the claim: the sender gave up recording it
            redis.resume()
            # The claim loop takes the delivery again, and records it: a
            # second send would come before that record (its answer first).
            deadline = time.monotonic() + 10
            while redis_client_zcard(redis.url(0), "asyncwsgi:callbacks"):
                assert time.monotonic() < deadline, "the delivery was never recorded"
                time.sleep(0.05)
            assert len(receiver.deliveries) == 1
            assert wait_done(client, location).status_code == 200
    finally:
        if app is not None:
            app.close(timeout=5)
        redis.stop()


def redis_client_zcard(url: str, key: str) -> int:
    import redis as redis_py

    client = redis_py.Redis.from_url(url)
    try:
        return int(client.zcard(key))
    finally:
        client.close()


class Scripted:
    """A receiver on a real socket that answers the n-th connection with
    ``answers[n]`` (raw bytes, then closes), the last one again after that."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.connections = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hooks/"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                raw = b""
                while b"\r\n\r\n" not in raw:
                    raw += conn.recv(65536)
                conn.sendall(self.answers[min(self.connections, len(self.answers) - 1)])
                self.connections += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.listener.close()


@pytest.mark.parametrize(
    "answers, connections",
    [
        pytest.param(
            [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"],
            1,
            id="interim-then-204",
        ),
        pytest.param([b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.0 200 OK\r\n\r\n"], 2, id="not-http"),
        pytest.param([b"HTTP/1.1 200", b"HTTP/1.1 200 OK\r\n\r\n"], 2, id="closed-early"),
    ],
)
def test_only_a_final_2xx_status_line_counts(
    wrap: Any, answers: list[bytes], connections: int
) -> None:
    from werkzeug.test import Client

    receiver = Scripted(answers)
    try:

        def work(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start_response("200 OK", [])
            return [b"ok"]

        app = wrap(work, callback_allow=[receiver.url], callback_secret=SECRET)
        response = Client(app).post("/work/x", headers={"Callback-URL": receiver.url + "x"})
        assert response.status_code == 202
        deadline = time.monotonic() + 10
        while receiver.connections < connections:
            assert time.monotonic() < deadline, receiver.connections
            time.sleep(0.05)
        time.sleep(2.5)  # a retry would come after 1 s
        assert receiver.connections == connections
    finally:
        receiver.close()


@pytest.mark.slow
def test_a_saturated_receiver_is_bounded_and_the_others_go_on(tmp_path: Path, store: str) -> None:
    # Twenty deliveries to one trickling receiver: at most 8 attempts at once
    # reach it (the bound per origin); the rest wait or go back to the store,
    # and a healthy receiver's callbacks still come at once.
    healthy = Receiver()
    with trickling(1) as (slow,), receiving(healthy) as hooks:
        allow = [hooks, slow.url]
        with bounded_server(tmp_path, store, allow, claim_lease=60, attempt_timeout=10) as port:
            for i in range(20):
                assert _post(port, "/work/x", slow.url + str(i))[0] == 202
            deadline = time.monotonic() + 10
            while len(slow.attempts) < 8:
                assert time.monotonic() < deadline, len(slow.attempts)
                time.sleep(0.05)
            time.sleep(1.0)
            sent = time.monotonic()
            for i in range(5):
                assert _post(port, "/work/y", hooks + str(i))[0] == 202
            healthy.wait_for(5, timeout=10)
            took = max(d.at for d in healthy.deliveries) - time.time() + time.monotonic() - sent
            opened = [a.opened for a in slow.attempts]
    assert took < 5.0, took
    # Within the first attempts' deadline, no more than the bound were open.
    assert len([t for t in opened if t < opened[0] + 9]) <= 8, opened


# -- a name server that never answers -----------------------------------------

# Run in a mount namespace of its own whose /etc holds only a resolv.conf that
# names a silent server and an nsswitch.conf that sends host lookups to DNS:
# the system resolver (glibc, through socket.getaddrinfo) waits its own 3 s
# for the answer, longer than the attempt may last, whatever the machine's
# own resolver configuration is.
_SLOW_LOOKUP = r"""
import json, ssl, sys, time
from asyncwsgi.callbacks.attempt import ATTEMPT_FAULTS, post

started = time.monotonic()
try:
    post("http://hooks.slow-names.test:8080/done", b"", connect_timeout=0.5,
         read_timeout=0.5, attempt_timeout=0.5, tls=ssl.create_default_context)
    outcome = "sent"
except ATTEMPT_FAULTS as exc:
    outcome = type(exc).__name__
print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - started}))
"""


@contextmanager
def silent_name_server(address: str) -> Iterator[None]:
    """A UDP socket on ``address`` port 53 that reads queries and never answers."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((address, 53))
    stop = threading.Event()

    def swallow() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                server.recvfrom(4096)
            except TimeoutError:
                continue

    reader = threading.Thread(target=swallow, name="silent-name-server", daemon=True)
    reader.start()
    try:
        yield
    finally:
        stop.set()
        reader.join(5)
        server.close()


@pytest.mark.timeout(60)
def test_a_name_lookup_that_never_ends_still_ends_the_attempt_by_its_deadline(
    tmp_path: Path,
) -> None:
    # An attempt that outlives attempt_timeout may outlive its claim, and then
    # a second process may send the same delivery beside it.
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("mount") is None:
        unavailable("a resolver of the test's own needs root, unshare and mount")
    address = "127.0.0.77"  # any loopback address: no local resolver is there
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "resolv.conf").write_text(f"nameserver {address}\noptions timeout:3 attempts:1\n")
    (etc / "nsswitch.conf").write_text("hosts: dns\n")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    command = f'mount --bind "{etc}" /etc && exec "{sys.executable}" -c "$0"'
    with silent_name_server(address):
        done = subprocess.run(
            ["unshare", "--mount", "sh", "-c", command, _SLOW_LOOKUP],
            capture_output=True, text=True, timeout=30, env=env, cwd=ROOT,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["outcome"] == "TimeoutError", seen
    assert seen["seconds"] < 0.5 + 0.5, seen


def test_a_name_the_lookup_refuses_fails_the_attempt_and_no_thread() -> None:
    # A 70-letter label is refused by the IDNA codec before any lookup: the
    # lookup's thread hands the error to the attempt, which fails as for any
    # receiver that cannot be reached (an exception in a thread would be an
    # error of this test: warnings are errors).
    import ssl

    from asyncwsgi.callbacks.attempt import post

    with pytest.raises(ValueError):
        post(
            f"http://{'a' * 70}.example:8080/done", b"", connect_timeout=1.0,
            read_timeout=1.0, attempt_timeout=1.0, tls=ssl.create_default_context,
        )  # fmt: skip


def test_a_lookup_whose_thread_cannot_start_gives_its_slot_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A process at its thread limit cannot start the lookup's thread. The
    # attempt fails; the slot it took must not stay taken, or after four such
    # attempts no lookup could start again.
    from asyncwsgi.callbacks import attempt

    start = threading.Thread.start

    def refused(self: threading.Thread) -> None:
        if self.name == "asyncwsgi-lookup":
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", refused)
    for _ in range(5):
        with pytest.raises(RuntimeError):
            attempt._addresses("localhost", 80, time.monotonic() + 1.0)
    monkeypatch.setattr(threading.Thread, "start", start)
    assert attempt._addresses("localhost", 80, time.monotonic() + 1.0)
