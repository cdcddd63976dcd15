"""Completion callbacks, received by real WSGI servers that check every signature
with the ``standardwebhooks`` package (an implementation independent of ours)."""

from __future__ import annotations

import base64
import json
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from asyncwsgi.callbacks import allowed_callback, backoff, check_allow_list, parse_secret
from asyncwsgi.middleware import CALLBACK_HEADER
from bench.services import free_port, terminate, wait_port
from tests.helpers import program, serving, wait_done
from tests.test_gunicorn_shared import gunicorn, store_url  # noqa: F401 (fixture)

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Delivery:
    at: float
    headers: dict[str, str]
    body: bytes
    verified: Any
    status: int
    path: str = ""  # as the request line had it, query included


@dataclass
class Receiver:
    """A webhook receiver: answers each POST with the next of ``script`` (then
    200), after checking its signature."""

    script: list[int] = field(default_factory=list)
    redirect_to: str | None = None
    secret: str = SECRET
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        headers["content-type"] = environ.get("CONTENT_TYPE", "")
        try:
            verified = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError as exc:
            verified = exc
        with self.lock:
            status = self.script.pop(0) if self.script else 200
            if isinstance(verified, Exception):
                status = 400
            path = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
            self.deliveries.append(Delivery(time.time(), headers, body, verified, status, path))
        extra = [("Location", self.redirect_to)] if self.redirect_to else []
        start_response(f"{status} Whatever", [("Content-Type", "text/plain"), *extra])
        return [b"noted"]

    def accepted(self) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if 200 <= d.status < 300]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count:
            assert time.monotonic() < deadline, f"{len(self.deliveries)} of {count} deliveries"
            time.sleep(0.02)
        return list(self.deliveries)


@contextmanager
def receiving(receiver: Receiver) -> Iterator[str]:
    with serving(receiver) as base:
        yield base + "/hooks/"


def work(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [b"made"]


def test_signed_notice_retried_after_errors_then_accepted_once(wrap: Any) -> None:
    receiver = Receiver(script=[500, 500])
    with receiving(receiver) as hooks:
        app = wrap(work, callback_allow=[hooks], callback_secret=SECRET)
        client = Client(app)
        response = client.post("/work/x", headers={"Callback-URL": hooks + "done?x=1"})
        assert response.status_code == 202
        assert response.headers[CALLBACK_HEADER] == hooks + "done?x=1"
        location = response.headers["Location"]
        finished = time.time()
        deliveries = receiver.wait_for(3)
        wait_done(client, location)
        time.sleep(1.5)  # nothing more comes
    assert [d.status for d in receiver.deliveries] == [500, 500, 200]
    assert len(receiver.accepted()) == 1
    task_id = location.rsplit("/", 1)[1]
    for delivery in deliveries:
        assert delivery.verified == {
            "id": task_id,
            "status_url": location,
            "status": 201,
            "finished": delivery.verified["finished"],
        }
        assert delivery.headers["webhook-id"] == task_id  # the same on every retry
        assert delivery.headers["content-type"] == "application/json"
        assert abs(int(delivery.headers["webhook-timestamp"]) - delivery.at) <= 2
    # 1 s, then 2 s between attempts (and the claim loop's poll).
    gaps = [b.at - a.at for a, b in zip(deliveries, deliveries[1:], strict=False)]
    assert 0.9 < gaps[0] < 2.0 and 1.9 < gaps[1] < 3.2, gaps
    assert deliveries[0].at - finished < 1.5


def test_outside_the_allow_list_is_400_and_never_requested(wrap: Any) -> None:
    allowed, other = Receiver(), Receiver()
    with receiving(allowed) as hooks, receiving(other) as elsewhere:
        app = wrap(work, callback_allow=[hooks], callback_secret=SECRET)
        client = Client(app)
        for url in (
            elsewhere + "x",
            hooks.replace("127.0.0.1", "localhost"),
            hooks + "../admin",
            hooks + "%2e%2e/admin",
            hooks.rstrip("/"),
            "ftp://127.0.0.1/hooks/",
            hooks + "x#frag",
            "http://user@" + hooks[len("http://") :],
        ):
            response = client.post("/work/x", headers={"Callback-URL": url})
            assert response.status_code == 400, url
            assert CALLBACK_HEADER not in response.headers
        # Without callback_allow the header is ignored.
        plain = Client(wrap(work))
        response = plain.post("/work/x", headers={"Callback-URL": elsewhere + "x"})
        assert response.status_code == 202
        assert CALLBACK_HEADER not in response.headers
        wait_done(plain, response.headers["Location"])
        time.sleep(1.0)
    assert other.deliveries == [] and allowed.deliveries == []


def test_redirects_are_never_followed(wrap: Any) -> None:
    target = Receiver()
    with receiving(target) as target_url:
        redirecting = Receiver(script=[307, 307], redirect_to=target_url + "x")
        with receiving(redirecting) as hooks:
            app = wrap(work, callback_allow=[hooks], callback_secret=SECRET)
            client = Client(app)
            response = client.post("/work/x", headers={"Callback-URL": hooks + "x"})
            assert response.status_code == 202
            receiver_log = redirecting.wait_for(3, timeout=15)
    # A redirect is a failed attempt, tried again later: never a request elsewhere.
    assert [d.status for d in receiver_log] == [307, 307, 200]
    assert target.deliveries == []


def test_a_receiver_that_never_answers_holds_up_nothing(wrap: Any) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = silent.accept()
            except TimeoutError:
                continue
            held.append(conn)  # never read, never answered

    thread = threading.Thread(target=accept)
    thread.start()
    good = Receiver()
    silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}/hooks/"
    try:
        with receiving(good) as hooks:
            app = wrap(work, callback_allow=[hooks, silent_url], callback_secret=SECRET)
            assert app.callbacks is not None
            app.callbacks.read_timeout = 0.5
            client = Client(app)
            client.post("/work/x", headers={"Callback-URL": silent_url + "x"})
            time.sleep(0.3)
            started = time.monotonic()
            client.post("/work/y", headers={"Callback-URL": hooks + "y"})
            good.wait_for(1, timeout=5)
            assert time.monotonic() - started < 2.0
            # The silent one was timed out and tried again.
            deadline = time.monotonic() + 10
            while len(held) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        silent.close()
    assert len(good.accepted()) == 1


@pytest.mark.slow
def test_delivery_survives_a_store_outage(tmp_path: Path) -> None:
    executable = program("redis-server")
    port = free_port()
    command = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "yes", "--appendfsync", "always",
               "--dir", str(tmp_path)]  # fmt: skip

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port, proc)
        return proc

    redis_proc = start()
    receiver = Receiver(script=[500])
    app: AsyncMiddleware | None = None
    try:
        with receiving(receiver) as hooks:
            app = AsyncMiddleware(
                work,
                paths=["/work/*"],
                store=f"redis://127.0.0.1:{port}/0?socket_timeout=2&socket_connect_timeout=1",
                callback_allow=[hooks],
                callback_secret=SECRET,
            )
            client = Client(app)
            client.post("/work/x", headers={"Callback-URL": hooks + "x"})
            receiver.wait_for(1)
            time.sleep(0.3)  # the failure is recorded: due again in 1 s
            redis_proc.send_signal(signal.SIGKILL)
            redis_proc.wait()
            time.sleep(3)  # the retry falls due while the store is down
            assert receiver.deliveries[1:] == []
            redis_proc = start()
            deliveries = receiver.wait_for(2, timeout=15)
            time.sleep(1.5)
            assert [d.status for d in receiver.deliveries] == [500, 200]
            assert deliveries[1].verified["status"] == 201
            threads = {t.name for t in threading.enumerate()}
            assert "asyncwsgi-callbacks" in threads
    finally:
        if app is not None:
            app.close(timeout=5)
        terminate(redis_proc)


# -- several processes ----------------------------------------------------------


@pytest.mark.slow
def test_two_workers_deliver_each_callback_exactly_once(
    tmp_path: Path,
    store_url: str,  # noqa: F811
) -> None:
    receiver = Receiver()
    with receiving(receiver) as hooks:
        environ = {
            "ASYNCWSGI_TEST_CALLBACK_ALLOW": hooks,
            "ASYNCWSGI_TEST_CALLBACK_SECRET": SECRET,
        }
        args = ["-w", "2", "-k", "gthread", "--threads", "4"]
        with gunicorn(
            tmp_path, store_url, args, app="tests.apps.push_app:application", environ=environ
        ) as (port, _process):
            import http.client

            ids = []
            pids = set()
            for i in range(200):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                try:
                    conn.request(
                        "POST",
                        f"/work/{i}",
                        headers={"Callback-URL": hooks + str(i), "Connection": "close"},
                    )
                    response = conn.getresponse()
                    response.read()
                finally:
                    conn.close()
                assert response.status == 202
                assert response.getheader(CALLBACK_HEADER) == hooks + str(i)
                ids.append((response.getheader("Location") or "").rsplit("/", 1)[1])
                pids.add(response.getheader("X-Pid"))
            receiver.wait_for(200, timeout=60)
            time.sleep(2)
    assert len(pids) == 2  # both workers took tasks (and so sent callbacks)
    delivered = [d.headers["webhook-id"] for d in receiver.deliveries]
    assert sorted(delivered) == sorted(ids)
    assert all(not isinstance(d.verified, Exception) for d in receiver.deliveries)
    by_id = {d.headers["webhook-id"]: json.loads(d.body) for d in receiver.deliveries}
    assert all(by_id[task_id]["status"] == 200 for task_id in ids)


# -- the rules, in isolation -------------------------------------------------------


def test_backoff_doubles_to_a_cap() -> None:
    assert [backoff(n, 60) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff(1000, 60) == 60


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"callback_allow": ["https://hooks.example.com/"]}, id="no-secret"),
        pytest.param(
            {"callback_allow": ["https://hooks.example.com"], "callback_secret": SECRET},
            id="prefix-inside-host",
        ),
        pytest.param(
            {"callback_allow": ["https://hooks.example.com/"], "callback_secret": "not-whsec"},
            id="bad-secret",
        ),
        pytest.param(
            {"callback_allow": ["https://x/"], "callback_secret": "whsec_" + "QUJD"},
            id="short-secret",
        ),
    ],
)
def test_bad_callback_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AsyncMiddleware(work, **options)


def test_allow_list_rules() -> None:
    prefixes = check_allow_list(["https://hooks.example.com/in/"])
    assert allowed_callback("https://hooks.example.com/in/x?y=1", prefixes)
    assert not allowed_callback("https://hooks.example.com/in/../out", prefixes)
    assert not allowed_callback("https://hooks.example.com/out", prefixes)
    assert not allowed_callback("https://hooks.example.com/in/\nx", prefixes)
    assert len(parse_secret(SECRET)) == 32
