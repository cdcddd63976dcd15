"""A bounded soak: many tasks through gunicorn and a shared store, with client
retries, store outages, a worker killed in the middle and every worker
restarted near the end.

    python -m bench.soak [--tasks 100000] [--clients 16] [--store sqlite|redis] [--callbacks]

The store goes away twice during the run (at a quarter and at two fifths of
the tasks): Redis is SIGKILLed and started again a second later (with an
append-only file, as a production Redis keeps its data); SQLite has its write
lock held by another process for ``--lock-seconds`` (2), past the store's
1-second busy timeout. Clients retry a 503 that carries ``Retry-After`` (the
store was unavailable: nothing was accepted or nothing was read) with the
same ``Idempotency-Key``.

Every task carries its own ``Idempotency-Key``, so a client that retries after
a dropped connection never starts the work twice. The app appends each run to
a journal (one line per run, ``O_APPEND``), which tells runs apart from
answers. Printed at the end, and written to ``bench/results/soak.json``:
tasks, completed with the right body, ended as 500 "worker lost" (the tasks on
the killed worker), lost (none may be), run twice (none may be), and RSS and
open file descriptors of the workers that lived through the whole soak,
measured after a warm-up and at the end.

With ``--callbacks`` every task carries a ``Callback-URL`` to a receiver in
this process, which is slow (no answer within the sender's attempt deadline,
then a 503) for one delivery in twenty and fails (500) for one in twenty,
each on its first attempt, and accepts (200) every other attempt. Once the
tasks are done it waits for their callbacks: each task that ended must be
called back (accepted) exactly once.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from asyncwsgi.stores import Store
    from bench.services import RedisServer

ROOT = Path(__file__).resolve().parent.parent
LEASE = 3.0
SQLITE_TIMEOUT = 1.0
# The sender's deadline for one attempt, and its longest wait between two, in
# the soak: short, so that the run waits seconds for its retries, not minutes.
ATTEMPT_TIMEOUT = 2.0
MAX_BACKOFF = 2.0


def app_factory() -> object:
    """The soak's app (imported by gunicorn as ``bench.soak:application``)."""
    from asyncwsgi import AsyncMiddleware

    journal = os.environ["SOAK_JOURNAL"]

    def inner(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        path = str(environ["PATH_INFO"])
        if path == "/_stats":
            fds = len(os.listdir("/proc/self/fd"))
            kinds: Counter[str] = Counter()
            for entry in os.listdir("/proc/self/fd"):
                try:
                    target = os.readlink(f"/proc/self/fd/{entry}")
                except OSError:
                    continue  # closed meanwhile by another thread
                kinds[target.split(":")[0].rsplit("/", 1)[-1]] += 1
            with open("/proc/self/statm") as statm:
                rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            body = json.dumps(
                {"pid": os.getpid(), "rss": rss, "fds": fds, "threads": threading.active_count(),
                 "kinds": kinds}
            ).encode()  # fmt: skip
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        name = path.rsplit("/", 1)[-1]
        fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{name} {os.getpid()}\n".encode())
        finally:
            os.close(fd)
        if name.endswith("-slow"):
            time.sleep(30)
        body = f"done {name}".encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    url = os.environ["SOAK_STORE"]
    store: Store | str = url
    if url.startswith("sqlite:///"):
        from asyncwsgi.stores import SQLiteStore

        # A busy timeout shorter than the soak's lock: the lock is an outage.
        store = SQLiteStore(url[len("sqlite:///") :], timeout=SQLITE_TIMEOUT)
    hooks = os.environ.get("SOAK_HOOKS")
    middleware = AsyncMiddleware(
        inner,
        paths=["/work/*"],
        store=store,
        lease=LEASE,
        max_pending=10_000,
        # Every thread of a worker may long-poll: the soak counts tasks, and
        # a client answered at once would only poll again.
        max_waiting=8,
        callback_allow=[hooks] if hooks else None,
        callback_secret=os.environ.get("SOAK_SECRET") if hooks else None,
    )
    if middleware.callbacks is not None:
        middleware.callbacks.attempt_timeout = ATTEMPT_TIMEOUT
        middleware.callbacks.read_timeout = ATTEMPT_TIMEOUT
        middleware.callbacks.max_backoff = MAX_BACKOFF
    return middleware


if os.environ.get("SOAK_JOURNAL"):
    application = app_factory()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Client:
    """One keep-alive connection that reconnects on failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None
        self.retries = 0
        self.unavailable = 0

    def request(
        self, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        for attempt in range(200):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.conn.request(method, path, headers=headers)
                response = self.conn.getresponse()
                answer = response.status, dict(response.getheaders()), response.read()
                if answer[0] == 503 and "Retry-After" in answer[1]:
                    # The store was unavailable (or the table full): nothing
                    # happened; the same request again is safe.
                    self.unavailable += 1
                    time.sleep(min(1.0, float(answer[1]["Retry-After"])))
                    continue
                return answer
            except (OSError, http.client.HTTPException):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                self.retries += 1
                time.sleep(min(1.0, 0.02 * (attempt + 1)))
        raise RuntimeError(f"{method} {path}: no answer after 200 tries")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class Receiver(http.server.ThreadingHTTPServer):
    """The callbacks' receiver: slow on the first attempt of one delivery in
    twenty, failing on the first of another one in twenty, accepting every
    other attempt; it counts what it answered, per task."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Hook)
        self.lock = threading.Lock()
        self.answers: defaultdict[str, list[int]] = defaultdict(list)
        self.first_accepted: dict[str, float] = {}
        self.accepted_at: defaultdict[str, list[float]] = defaultdict(list)

    def answer(self, name: str) -> tuple[int, float]:
        """The status for this attempt and how long to wait before it."""
        with self.lock:
            attempt = len(self.answers[name])
            kind = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 20
            if attempt == 0 and kind == 0:
                status, pause = 503, ATTEMPT_TIMEOUT + 1.0  # slow: past the deadline
            elif attempt == 0 and kind == 1:
                status, pause = 500, 0.0
            else:
                status, pause = 200, 0.0
            self.answers[name].append(status)
            if status == 200:
                self.first_accepted.setdefault(name, time.monotonic())
                self.accepted_at[name].append(time.monotonic())
            return status, pause

    def accepted(self, name: str) -> int:
        with self.lock:
            return self.answers[name].count(200)


class _Hook(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, pause = self.server.answer(self.path.rsplit("/", 1)[-1])
        time.sleep(pause)
        try:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
        except OSError:
            pass  # the sender gave up on a slow answer and closed

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def stats(port: int, samples: int = 40) -> dict[int, dict[str, int]]:
    """Ask fresh connections until every worker answered (they land anywhere)."""
    seen: dict[int, dict[str, int]] = {}
    for _ in range(samples):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/_stats", headers={"Connection": "close"})
            answer = json.loads(conn.getresponse().read())
            seen[answer["pid"]] = answer
        finally:
            conn.close()
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--lock-seconds", type=float, default=2.0)
    parser.add_argument("--callbacks", action="store_true", help="a Callback-URL on every task")
    parser.add_argument(
        "--kills", type=int, default=1,
        help="workers SIGKILLed: the one running the slow task halfway, then others",
    )  # fmt: skip
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="asyncwsgi-soak-"))
    journal = workdir / "journal"
    port = free_port()
    redis = None
    if args.store == "redis":
        from bench.services import RedisServer

        redis = RedisServer("redis-server", "--appendonly", "yes", "--appendfsync", "always")
        store_url = redis.url(0)
    else:
        store_url = f"sqlite:///{workdir}/tasks.db"
    env = dict(os.environ, SOAK_JOURNAL=str(journal), SOAK_STORE=store_url)
    receiver = None
    if args.callbacks:
        receiver = Receiver()
        threading.Thread(target=receiver.serve_forever, daemon=True).start()
        env["SOAK_HOOKS"] = f"http://127.0.0.1:{receiver.server_address[1]}/hooks/"
        env["SOAK_SECRET"] = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    outage = Outage(redis, workdir / "tasks.db", args.lock_seconds)
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", str(args.workers), "-k", "gthread",
         "--threads", "8", "-b", f"127.0.0.1:{port}", "--log-level", "error",
         "-c", "python:bench.gunicorn_conf", "bench.soak:application"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("gunicorn did not start") from None
                time.sleep(0.1)
        return soak(args, port, journal, server, outage, receiver, env.get("SOAK_HOOKS"))
    finally:
        if receiver is not None:
            receiver.shutdown()
            receiver.server_close()
        server.terminate()
        server.wait(30)
        if redis is not None:
            redis.stop()


class Outage:
    """Makes the store unavailable for a while: Redis killed and started
    again, or SQLite's write lock held by another process."""

    def __init__(self, redis: RedisServer | None, sqlite_path: Path, lock_seconds: float) -> None:
        self.redis = redis
        self.sqlite_path = sqlite_path
        self.lock_seconds = lock_seconds
        self.log: list[dict[str, float | str]] = []

    def __call__(self, after_tasks: int) -> None:
        started = time.monotonic()
        if self.redis is not None:
            self.redis.kill()
            time.sleep(1.0)
            self.redis.start()
            what = "redis-server SIGKILLed, started again after 1 s"
        else:
            code = (
                "import sqlite3, sys, time\n"
                "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                "c.execute('BEGIN IMMEDIATE')\n"
                "time.sleep(float(sys.argv[2]))\n"
                "c.execute('COMMIT')\n"
            )
            subprocess.run(
                [sys.executable, "-c", code, str(self.sqlite_path), str(self.lock_seconds)],
                check=True,
            )
            what = f"SQLite write lock held for {self.lock_seconds:g} s"
        self.log.append(
            {"after_tasks": after_tasks, "what": what,
             "seconds": round(time.monotonic() - started, 1)}
        )  # fmt: skip


def soak(
    args: argparse.Namespace,
    port: int,
    journal: Path,
    server: subprocess.Popen[bytes],
    outage: Outage,
    receiver: Receiver | None = None,
    hooks: str | None = None,
) -> int:
    outcomes: Counter[str] = Counter()
    ended: dict[str, float] = {}  # the tasks that ended, and when the client saw it
    lock = threading.Lock()
    progress = tqdm(total=args.tasks, unit="task", file=sys.stderr, mininterval=1.0)
    next_task = iter(range(args.tasks))
    warm = args.tasks // 10
    killed: list[int] = []
    kill_times: list[float] = []
    before: dict[int, dict[str, int]] = {}
    samples: list[tuple[int, dict[int, dict[str, int]]]] = []
    restarted: list[int] = []
    clients: list[Client] = []

    def run() -> None:
        client = Client(port)
        clients.append(client)
        while True:
            with lock:
                number = next(next_task, None)
            if number is None:
                return
            name = f"t{number}" + ("-slow" if number == args.tasks // 2 else "")
            headers = {"Idempotency-Key": name, "Prefer": "wait=10"}
            if hooks is not None:
                headers["Callback-URL"] = hooks + name
            status, answer_headers, body = client.request("POST", f"/work/{name}", headers)
            give_up = time.monotonic() + 120
            while status == 202 and answer_headers.get("Location", "").startswith("/status/"):
                if time.monotonic() > give_up:
                    status = -1  # still 202 after two minutes: stuck
                    break
                location = answer_headers["Location"]
                status, answer_headers, body = client.request(
                    "GET", location, {"Prefer": "wait=10"}
                )
            if status == 200 and body == f"done {name}".encode():
                outcome = "completed"
            elif status == 500 and b"lost" in body:
                outcome = "worker_lost"
            elif status == 503 and b"not started" in body:
                outcome = "not_started"
            elif status == -1:
                outcome = "stuck"
            else:
                outcome = f"wrong:{status}"
            with lock:
                outcomes[outcome] += 1
                if outcome in ("completed", "worker_lost", "not_started"):
                    ended[name] = time.monotonic()
            progress.update(1)

    def chaos() -> None:
        # After the warm-up, measure; halfway, kill the worker running the slow task.
        while progress.n < warm:
            time.sleep(0.2)
        before.update(stats(port))
        # Two store outages with tasks in flight.
        for share in (0.25, 0.4):
            while progress.n < args.tasks * share:
                time.sleep(0.2)
            outage(progress.n)
        while progress.n < args.tasks // 2 + args.clients:
            time.sleep(0.2)
        time.sleep(0.5)
        for line in journal.read_text().splitlines()[::-1]:
            name, pid = line.split()
            if name.endswith("-slow"):
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                kill_times.append(time.monotonic())
                break
        # More kills, spread between 55 % and 85 % of the tasks: each the
        # worker that ran the latest task, with tasks and callbacks in flight.
        for kill in range(1, args.kills):
            while progress.n < args.tasks * (0.55 + 0.3 * kill / args.kills):
                time.sleep(0.2)
            for line in journal.read_text().splitlines()[::-1]:
                worker = int(line.split()[1])
                if worker not in killed:
                    try:
                        os.kill(worker, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    killed.append(worker)
                    kill_times.append(time.monotonic())
                    break
        # Samples of the survivors' descriptors and memory: a leak grows with
        # every task, a per-thread connection stops growing.
        for share in (0.7, 0.9):
            while progress.n < args.tasks * share:
                time.sleep(0.2)
            samples.append((progress.n, stats(port)))
        # Then a graceful restart of every worker (what a deploy does), with
        # tasks in flight: none may be lost or run twice.
        while progress.n < args.tasks * 0.95:
            time.sleep(0.2)
        server.send_signal(signal.SIGHUP)
        restarted.append(progress.n)
        kill_times.append(-time.monotonic())  # negative: the graceful restart

    started = time.monotonic()
    threads = [threading.Thread(target=run) for _ in range(args.clients)]
    threads.append(threading.Thread(target=chaos, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads[:-1]:
        thread.join()
    elapsed = time.monotonic() - started
    progress.close()
    called_back = callbacks(receiver, ended, port) if receiver is not None else None
    if called_back is not None and receiver is not None:
        # When each task called back twice was accepted, beside the kills
        # (seconds from the start; a negative one is the graceful restart).
        with receiver.lock:
            called_back["twice"] = {
                name: [round(at - started, 2) for at in times]
                for name, times in receiver.accepted_at.items()
                if len(times) > 1
            }
        called_back["kills_at"] = [
            round(at - started, 2) if at > 0 else -round(-at - started, 2) for at in kill_times
        ]
    # Memory and descriptors are compared on the workers that lived from the
    # warm-up to the last sample before the restart.
    after = samples[-1][1] if samples else stats(port)
    for client in clients:
        client.close()

    runs = Counter(line.split()[0] for line in journal.read_text().splitlines())
    survivors = sorted(set(before) & set(after))
    result = {
        "tasks": args.tasks,
        "seconds": round(elapsed, 1),
        "tasks_per_second": round(args.tasks / elapsed, 1),
        "completed": outcomes["completed"],
        "worker_lost_500": outcomes["worker_lost"],
        "not_started_503": outcomes["not_started"],
        "wrong": {k: v for k, v in outcomes.items() if k.startswith("wrong")},
        "stuck_at_202": outcomes["stuck"],
        "lost": args.tasks - sum(outcomes.values()),
        "never_ran": args.tasks - len(runs),
        "ran_twice": sum(1 for count in runs.values() if count > 1),
        "client_retries": sum(client.retries for client in clients),
        "client_503_retries": sum(client.unavailable for client in clients),
        "store": args.store,
        "store_outages": outage.log,
        "killed_worker_pids": killed,
        "workers_measured": len(survivors),
        "rss_mib_before": round(sum(before[p]["rss"] for p in survivors) / 2**20, 1),
        "rss_mib_after": round(sum(after[p]["rss"] for p in survivors) / 2**20, 1),
        "fds_before": sum(before[p]["fds"] for p in survivors),
        "fds_after": sum(after[p]["fds"] for p in survivors),
        "samples": [
            {
                "after_tasks": done,
                "rss_mib": round(sum(seen[p]["rss"] for p in survivors if p in seen) / 2**20, 1),
                "fds": sum(seen[p]["fds"] for p in survivors if p in seen),
                "threads": sum(seen[p]["threads"] for p in survivors if p in seen),
            }
            for done, seen in samples
        ],
        "server_restarted_after_tasks": restarted,
        "workers_before_restart": sorted(after),
        "workers_at_the_end": sorted(stats(port)),
        "machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
    }
    if called_back is not None:
        result["callbacks"] = called_back
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    ok = (
        result["lost"] == 0
        and result["ran_twice"] == 0
        and not result["wrong"]
        and result["stuck_at_202"] == 0
        and server.poll() is None
        and (
            called_back is None
            or (called_back["never"] == 0 and called_back["more_than_once"] == 0)
        )
    )
    return 0 if ok else 1


def callbacks(receiver: Receiver, ended: dict[str, float], port: int) -> dict[str, object]:
    """Wait (up to two minutes) until every task that ended was called back,
    then a little more for any second delivery; what the receiver saw."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        missing = [name for name in ended if not receiver.accepted(name)]
        if not missing:
            break
        # Requests that land on any worker, as traffic would: a process
        # starts its sender on the first status request it serves.
        for _ in range(8):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", "/status/" + "x" * 32, headers={"Connection": "close"})
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
        time.sleep(1.0)
    time.sleep(2 * ATTEMPT_TIMEOUT + MAX_BACKOFF)
    counts = Counter(receiver.accepted(name) for name in ended)
    with receiver.lock:
        attempts = [status for answers in receiver.answers.values() for status in answers]
        delays = sorted(
            receiver.first_accepted[name] - ended[name]
            for name in ended
            if name in receiver.first_accepted
        )
    return {
        "tasks_ended": len(ended),
        "called_back_once": counts[1],
        "never": counts[0],
        "more_than_once": sum(n for times, n in counts.items() if times > 1),
        "attempts": len(attempts),
        "attempts_slow_503": attempts.count(503),
        "attempts_failed_500": attempts.count(500),
        "not_for_an_ended_task": sorted(set(receiver.answers) - set(ended))[:20],
        "seconds_after_the_answer_median": round(delays[len(delays) // 2], 2) if delays else None,
        "seconds_after_the_answer_max": round(delays[-1], 2) if delays else None,
    }


if __name__ == "__main__":
    sys.exit(main())
