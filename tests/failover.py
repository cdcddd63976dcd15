"""Load and verdicts for the failover tests: clients that submit tasks to a
real server without pause and record every answer, and the final answer of
each task they were told was accepted."""

from __future__ import annotations

import http.client
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

RESULT_SIZE = 64 * 1024


def expected(path: str) -> bytes:
    """The body the test app (tests.apps.ha_app) answers for ``path``."""
    line = f"{path}|".encode()
    return (line * (RESULT_SIZE // len(line) + 1))[:RESULT_SIZE]


@dataclass(frozen=True)
class Answer:
    path: str
    sent: float  # time.monotonic() when the request was sent
    answered: float  # time.monotonic() when the answer came
    status: int  # 0: no HTTP answer at all
    location: str | None
    retry_after: str | None


def request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (so that it may land on any worker)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


class Submitters:
    """``clients`` threads, each submitting ``POST /work/<client>-<n>?<query>``
    one after another to 127.0.0.1:``port`` until :meth:`stop`."""

    def __init__(self, port: int, clients: int = 4, query: str = "ms=20") -> None:
        self.port = port
        self.query = query
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"submitter-{i}", daemon=True)
            for i in range(clients)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, client: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            path = f"/work/{client}-{n}"
            sent = time.monotonic()
            try:
                status, headers, _ = request(self.port, "POST", f"{path}?{self.query}")
                answer = Answer(
                    path,
                    sent,
                    time.monotonic(),
                    status,
                    headers.get("Location"),
                    headers.get("Retry-After"),
                )
            except OSError:
                answer = Answer(path, sent, time.monotonic(), 0, None, None)
            with self._lock:
                self.answers.append(answer)
            if answer.status != 202:
                time.sleep(0.05)  # a 503 says to wait; do not spin on it

    def accepted(self) -> int:
        """How many submissions were answered 202 so far."""
        with self._lock:
            return sum(1 for a in self.answers if a.status == 202)

    def accepted_after(self, moment: float) -> Answer | None:
        """The first 202 to a request sent after ``moment``."""
        with self._lock:
            return next((a for a in self.answers if a.sent > moment and a.status == 202), None)

    def stop(self) -> list[Answer]:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return list(self.answers)


def final(port: int, location: str, deadline: float) -> tuple[int, bytes]:
    """The task's answer once it is no longer pending (202) or unavailable
    (503), or the last one seen at ``deadline`` (time.monotonic())."""
    while True:
        try:
            status, _, body = request(port, "GET", location, {"Prefer": "wait=5"})
        except OSError:
            status, body = 0, b""
        if status not in (0, 202, 503) or time.monotonic() > deadline:
            return status, body
        time.sleep(0.2)


def finals(port: int, answers: list[Answer], timeout: float) -> dict[str, tuple[int, bytes]]:
    """Each accepted task's path -> its final answer, read by a few threads."""
    accepted = [a for a in answers if a.status == 202 and a.location]
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(8) as pool:
        verdicts = pool.map(lambda a: final(port, a.location or "", deadline), accepted)
        return {a.path: verdict for a, verdict in zip(accepted, verdicts, strict=True)}
