"""Load client: N threads, each with one keep-alive http.client connection, for a fixed time."""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

HOST = "127.0.0.1"


class Conn:
    """One keep-alive connection to 127.0.0.1:port that reconnects when dropped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)
        self.requests = 0  # answered so far

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPResponse, bytes]:
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, headers=headers or {})
                response = self.conn.getresponse()
                self.requests += 1
                return response.status, response, response.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def run_load(
    port: int, unit: Callable[[Conn], None], clients: int, duration: float
) -> dict[str, float]:
    """Keep ``clients`` connections busy with ``unit`` for ``duration`` seconds.

    Returns units per second, the p50 latency of a unit (ms), the count, and
    the requests a unit made on average (polls included)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    requests = [0] * clients
    errors: list[BaseException] = []
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker(index: int) -> None:
        conn = Conn(port)
        mine = latencies[index]
        try:
            start_gate.wait()
            deadline = stop_at[0]
            while True:
                t0 = time.perf_counter()
                if t0 >= deadline:
                    break
                unit(conn)
                mine.append(time.perf_counter() - t0)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            requests[index] = conn.requests
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    stop_at[0] = began + duration
    start_gate.wait()
    for thread in threads:
        thread.join(duration + 60)
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"load client failed: {errors[0]!r}") from errors[0]
    flat = [x for chunk in latencies for x in chunk]
    return {
        "per_s": len(flat) / elapsed,
        "p50_ms": statistics.median(flat) * 1000 if flat else float("nan"),
        "count": len(flat),
        "requests_per_unit": sum(requests) / len(flat) if flat else float("nan"),
    }


def get(
    path: str, headers: dict[str, str] | None = None, expect: int = 200
) -> Callable[[Conn], None]:
    def unit(conn: Conn) -> None:
        status, _, _ = conn.request("GET", path, headers)
        if status != expect:
            raise RuntimeError(f"GET {path} answered {status}, expected {expect}")

    return unit


def location_of(response: http.client.HTTPResponse) -> str:
    """The ``Location`` of a 202 (http.client would send a missing one as ``/``)."""
    location = response.getheader("Location")
    if location is None:
        raise RuntimeError(f"{response.status} without a Location")
    return location


def waited(path: str, prefer: str = "wait=5") -> Callable[[Conn], None]:
    """A request with ``Prefer: wait``: answered with the result when the
    process let it wait (200); else a 202, then a long-poll of the Location
    with the same preference until the result comes (what a client does)."""
    headers = {"Prefer": prefer}

    def unit(conn: Conn) -> None:
        status, response, _ = conn.request("GET", path, headers)
        while status == 202:
            status, response, _ = conn.request("GET", location_of(response), headers)
        if status != 200:
            raise RuntimeError(f"GET {path} with Prefer: {prefer} answered {status}")

    return unit


def full_cycle(path: str, poll_interval: float = 0.002) -> Callable[[Conn], None]:
    """Submit, then poll the Location every ``poll_interval`` until it answers 200."""

    def unit(conn: Conn) -> None:
        status, response, _ = conn.request("GET", path)
        if status != 202:
            raise RuntimeError(f"submit answered {status}")
        location = location_of(response)
        while True:
            time.sleep(poll_interval)
            status, _, _ = conn.request("GET", location)
            if status == 200:
                return
            if status != 202:
                raise RuntimeError(f"poll answered {status}")

    return unit


def floor_cycle(
    submit_path: str, poll_path: str, poll_interval: float = 0.002
) -> Callable[[Conn], None]:
    """What ``full_cycle`` would cost if the middleware cost nothing: the same
    two requests per task (the view, then after the same sleep one more cheap
    GET) against the bare app."""

    def unit(conn: Conn) -> None:
        for path in (submit_path, poll_path):
            status, _, _ = conn.request("GET", path)
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}")
            if path == submit_path:
                time.sleep(poll_interval)

    return unit


#: A config's figures under ``alternate``: the median of each figure its runs
#: returned (floats), ``rounds`` and ``runs_per_s`` (a list of floats). Any:
#: the figures' names are the configs' own, and one value is a list.
Medians = dict[str, Any]


def alternate(
    configs: Mapping[str, Callable[[], dict[str, float]]], rounds: int
) -> dict[str, Medians]:
    """Run each config once per round, alternating the order; medians per figure."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            runs[name].append(configs[name]())
    out: dict[str, Medians] = {}
    for name, results in runs.items():
        out[name] = {key: statistics.median(res[key] for res in results) for key in results[0]}
        out[name]["rounds"] = len(results)
        out[name]["runs_per_s"] = [res["per_s"] for res in results]
    return out


class Tally:
    """Thread-safe counts of how full cycles ended."""

    KEYS = ("completed", "not_found", "wrong_body", "other_status", "stuck")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(self.KEYS, 0)

    def add(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    @property
    def lost(self) -> int:
        return sum(v for k, v in self.counts.items() if k != "completed")


def _fresh(port: int, method: str, path: str) -> tuple[int, http.client.HTTPResponse, bytes]:
    """One request on a new connection, closed after the answer (``Connection: close``)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request(method, path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response, response.read()
    finally:
        conn.close()


def checked_cycle(
    path: str,
    tally: Tally,
    body: bytes = b"ok",
    poll_interval: float = 0.002,
    give_up: float = 30.0,
) -> Callable[[Conn], None]:
    """Like ``full_cycle``, but every request on a fresh connection (so that with
    ``gunicorn -w N`` submit and polls land on any worker), and a task that ends
    in a 404, another status, a wrong body or no answer within ``give_up``
    seconds is counted in ``tally`` instead of raising."""

    def unit(conn: Conn) -> None:
        status, response, _ = _fresh(conn.port, "GET", path)
        if status != 202:
            tally.add("other_status")
            return
        location = response.getheader("Location")
        if location is None:  # a 202 the client cannot follow: not an answer
            tally.add("other_status")
            return
        deadline = time.monotonic() + give_up
        while time.monotonic() < deadline:
            time.sleep(poll_interval)
            status, _, answer = _fresh(conn.port, "GET", location)
            if status == 202:
                continue
            if status == 200:
                tally.add("completed" if answer == body else "wrong_body")
            else:
                tally.add("not_found" if status == 404 else "other_status")
            return
        tally.add("stuck")

    return unit
