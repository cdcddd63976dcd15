"""High availability on Redis, through real processes: a primary with
replicas watched by a real Sentinel, and a Redis Cluster with a replica per
primary, serving a real gunicorn while four clients submit without pause;
the replicas stopped (SIGSTOP) for 3 s, the primary SIGKILLed, the replicas
resumed, a replica promoted.

With ``min_replicas=1`` every task answered 202 ends with the app's own
answer, and answers in between are 202 or 503 only. Without it the tasks
acknowledged while the replicas lagged are lost: the test makes that loss
certain rather than likely by having the primary drop a replica whose
output buffer passes 1 MiB (what Redis does at 256 MiB by default), so that
what was written after the drop reaches no replica, whatever the kernel's
socket buffers still held.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.services import (
    Gunicorn,
    RedisClusterServers,
    RedisReplicated,
    RedisServer,
    redis_cli,
)
from tests.failover import Answer, Submitters, expected, finals, request
from tests.helpers import program, wait_for

pytestmark = pytest.mark.slow

# A task may be running while the primary is away (each test keeps one of
# LONG_MS running from before the replicas stop until after the kill): its
# lease outlives the outage (3 s of stopped replicas, then the failover), so
# it is not ended as lost, and ends with the app's answer.
LEASE = 12.0
LONG_MS = 6000


@contextmanager
def serving(store_url: str, log: Path) -> Iterator[int]:
    """gunicorn (two threaded workers) serving tests.apps.ha_app on ``store_url``."""
    server = Gunicorn(
        "tests.apps.ha_app:application",
        "-w", "2", "-k", "gthread", "--threads", "8", "--graceful-timeout", "5",
        env={"ASYNCWSGI_TEST_STORE": store_url, "ASYNCWSGI_TEST_LEASE": str(LEASE)},
        log=log,
    )  # fmt: skip
    with server:
        yield server.port


def connected_replicas(port: int) -> int:
    for line in redis_cli(port, "info", "replication").splitlines():
        if line.startswith("connected_slaves:"):
            return int(line.split(":")[1])
    return -1


def serves(cluster: RedisClusterServers, port: int) -> bool:
    """Whether the node at ``port`` is the primary of the table's slot now."""
    try:
        return cluster.primary_of_key("{asyncwsgi}:active") == port
    except RuntimeError:  # no primary for it (the failover is under way)
        return False


def assert_only_202_or_503(answers: list[Answer], log: Path) -> None:
    odd = [a for a in answers if a.status not in (202, 503)]
    assert not odd, (odd[:5], log.read_text()[-3000:])
    assert all(a.retry_after for a in answers if a.status == 503)


def assert_app_answers(verdicts: dict[str, tuple[int, bytes]]) -> None:
    wrong = {
        path: (status, body[:60])
        for path, (status, body) in verdicts.items()
        if status != 200 or body != expected(path)
    }
    assert not wrong, f"{len(wrong)} of {len(verdicts)} accepted tasks: {list(wrong.items())[:5]}"


def summary(answers: list[Answer], killed: float, first: Answer | None) -> str:
    def count(status: int, before: bool) -> int:
        return sum(1 for a in answers if a.status == status and (a.sent < killed) == before)

    again = "never" if first is None else f"{first.sent - killed:.1f} s"
    return (
        f"before the kill: {count(202, True)} x 202, {count(503, True)} x 503; after: "
        f"{count(202, False)} x 202, {count(503, False)} x 503; accepted again after {again}"
    )


def start_long_task(port: int) -> Answer:
    """A task of LONG_MS, submitted and seen running (the primary's replicas
    have its start): it runs through what comes next."""
    sent = time.monotonic()
    status, headers, _ = request(port, "POST", f"/work/long?ms={LONG_MS}")
    assert status == 202, status
    answer = Answer("/work/long", sent, time.monotonic(), status, headers["Location"], None)
    assert wait_for(lambda: b'"running"' in request(port, "GET", headers["Location"])[2], 5.0), (
        "the long task did not start"
    )
    return answer


def stop_replicas_then_kill_primary(
    primary: RedisServer, replicas: list[RedisServer], *, until_dropped: bool
) -> tuple[float, float]:
    """The fault: the replicas stopped for 3 s (and, with ``until_dropped``,
    until the primary dropped them, at most 10 s more), the primary killed,
    the replicas resumed. Answers the moment the primary had dropped its
    replicas (or the kill, if it had not) and the moment of the kill."""
    for replica in replicas:
        replica.pause()
    paused = time.monotonic()
    time.sleep(3.0)
    if until_dropped:
        wait_for(lambda: connected_replicas(primary.port) == 0, 10.0)
        print(
            f"the primary dropped its replicas {time.monotonic() - paused:.1f} s after they stopped"
        )
    dropped = time.monotonic() if connected_replicas(primary.port) == 0 else float("inf")
    time.sleep(0.5)  # acknowledged writes after the drop
    primary.kill()
    killed = time.monotonic()
    for replica in replicas:
        replica.resume()
    return min(dropped, killed), killed


@pytest.mark.parametrize("min_replicas", [1, 0], ids=["min_replicas=1", "no min_replicas"])
def test_sentinel_failover(min_replicas: int, tmp_path: Path) -> None:
    executable, cli = program("redis-server"), program("redis-cli")
    with RedisReplicated(2, executable, cli) as group:
        # What a slow replica may hold back before the primary drops it.
        redis_cli(
            group.primary.port, "config", "set", "client-output-buffer-limit", "replica 1mb 1mb 0"
        )
        query = "socket_timeout=2" + (f"&min_replicas={min_replicas}" if min_replicas else "")
        log = tmp_path / "gunicorn.log"
        with serving(group.url(0, query), log) as port:
            load = Submitters(port, 4)
            try:
                # Before: every worker warm and accepting (the first request imports the app).
                assert wait_for(lambda: load.accepted() >= 40, 20.0), load.answers[:5]
                long = start_long_task(port) if min_replicas else None
                dropped, killed = stop_replicas_then_kill_primary(
                    group.primary, group.replicas, until_dropped=not min_replicas
                )
                group.wait_failover()
                again = wait_for(lambda: load.accepted_after(killed) is not None, 15.0)
                time.sleep(1.5)
            finally:
                answers = load.stop()
            first = load.accepted_after(killed)
            print(summary(answers, killed, first))
            assert_only_202_or_503(answers, log)
            assert again and first is not None
            if long is not None:
                # Accepted again within 10 s of the kill, and nothing accepted
                # lost, the task running through the failover included.
                assert first.answered - killed < 10.0, first.answered - killed
                assert long.sent + LONG_MS / 1000 > killed, "the long task ended before the kill"
                assert_app_answers(finals(port, [*answers, long], timeout=LEASE + 20))
                return
            # Without min_replicas: the 202s given after the primary dropped
            # its replicas were on the primary alone, and died with it.
            after_drop = [a for a in answers if a.status == 202 and dropped < a.sent < killed]
            verdicts = finals(port, after_drop, timeout=5)
            unknown = [path for path, (status, _) in verdicts.items() if status == 404]
            print(
                f"replicas dropped {killed - dropped:.1f} s before the kill; acknowledged "
                f"after the drop: {len(after_drop)}, unknown after the failover: {len(unknown)}"
            )
            assert after_drop, "nothing was acknowledged between the drop and the kill"
            assert len(unknown) == len(after_drop), {p: s for p, (s, _) in verdicts.items()}


def test_sentinel_single_replica_after_its_promotion(tmp_path: Path) -> None:
    """One replica and min_replicas=1: once it is promoted no replica is left
    to confirm a write, so every submission is a 503 (none a 202 that the
    next failover could undo) until a replica joins again: here the old
    primary, restarted, which Sentinel makes a replica of the new one."""
    executable = program("redis-server")
    program("redis-cli")
    with RedisReplicated(1, executable) as group:
        log = tmp_path / "gunicorn.log"
        with serving(group.url(0, "socket_timeout=2&min_replicas=1"), log) as port:
            load = Submitters(port, 4)
            try:
                assert wait_for(lambda: load.accepted() >= 20, 20.0), load.answers[:5]
                group.primary.kill()
                killed = time.monotonic()
                new = group.wait_failover()
                promoted = time.monotonic()
                # Every client answered at least once by the promoted replica alone.
                assert wait_for(
                    lambda: sum(1 for a in list(load.answers) if a.sent > promoted) >= 4, 15.0
                )
                # The old primary comes back as a replica of the new one (what
                # Sentinel does too, within its 10 s round of INFO).
                group.primary.start()
                redis_cli(group.primary.port, "replicaof", "127.0.0.1", str(new.port))
                rejoined = time.monotonic()
                again = wait_for(lambda: load.accepted_after(rejoined) is not None, 20.0)
                time.sleep(1.0)
            finally:
                answers = load.stop()
            print(summary(answers, killed, load.accepted_after(killed)))
            assert_only_202_or_503(answers, log)
            # Alone, the promoted replica confirms nothing: not one 202.
            alone = [a for a in answers if a.sent > promoted and a.answered < rejoined]
            assert alone and all(a.status == 503 for a in alone), alone[:5]
            assert again
            assert_app_answers(finals(port, answers, timeout=LEASE + 20))


def test_cluster_failover_with_min_replicas(tmp_path: Path) -> None:
    """A Redis Cluster of 3 primaries with a replica each; the table lives in
    one slot (the prefix's hash tag), so min_replicas counts the replicas of
    the shard that holds it. That shard's replica stopped for 3 s, its
    primary SIGKILLed, the replica resumed and promoted by the cluster; the
    old primary then restarts and rejoins as the new primary's replica."""
    executable, cli = program("redis-server"), program("redis-cli")
    with RedisClusterServers(3, executable, cli, replicas=1, node_timeout=1000) as cluster:
        primary_port = cluster.primary_of_key("{asyncwsgi}:active")
        replica_port = next(port for port, (_, of) in cluster.roles().items() if of == primary_port)
        other = next(port for port in cluster.ports if port not in (primary_port, replica_port))
        primary, replica = cluster.node(primary_port), cluster.node(replica_port)
        url = (
            f"redis+cluster://127.0.0.1:{other}/?prefix=%7Basyncwsgi%7D%3A"
            "&socket_timeout=2&min_replicas=1"
        )
        log = tmp_path / "gunicorn.log"
        with serving(url, log) as port:
            load = Submitters(port, 4)
            try:
                assert wait_for(lambda: load.accepted() >= 40, 20.0), load.answers[:5]
                long = start_long_task(port)
                replica.pause()
                time.sleep(3.0)
                primary.kill()
                killed = time.monotonic()
                replica.resume()
                assert wait_for(lambda: serves(cluster, replica_port), 20.0), "no promotion"
                primary.start()  # rejoins as a replica of the promoted node
                again = wait_for(lambda: load.accepted_after(killed) is not None, 20.0)
                time.sleep(1.5)
            finally:
                answers = load.stop()
            first = load.accepted_after(killed)
            print(summary(answers, killed, first))
            assert_only_202_or_503(answers, log)
            assert again
            assert long.sent + LONG_MS / 1000 > killed, "the long task ended before the kill"
            assert_app_answers(finals(port, [*answers, long], timeout=LEASE + 20))
