"""A real Redis for the tests: one ``redis-server`` per test session, and one
Redis Cluster of three masters for the tests that ask for it.

Without ``redis-server`` (and ``redis-cli``, for the cluster) on PATH the
tests that need them are skipped, except in CI (``CI=true``), where that is a
failure.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from bench.services import RedisClusterServers, RedisReplicated, RedisServer
from tests.helpers import program


def _need(name: str) -> str:
    return program(name)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a redis-server started for this session."""
    executable = _need("redis-server")
    try:
        server = RedisServer(executable)
    except RuntimeError as exc:
        pytest.fail(f"redis-server did not start: {exc}")
    with server:
        yield server.url(0)


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """``redis+cluster://127.0.0.1:<port>/`` of a three-master Redis Cluster
    started for this session (the URL names one node; the client finds the
    others)."""
    executable, cli = _need("redis-server"), _need("redis-cli")
    try:
        cluster = RedisClusterServers(3, executable, cli)
    except (RuntimeError, subprocess.SubprocessError) as exc:
        pytest.fail(f"the Redis Cluster did not start: {exc}")
    with cluster:
        yield f"redis+cluster://127.0.0.1:{cluster.ports[0]}/"


@pytest.fixture(scope="session")
def redis_sentinel_url() -> Iterator[str]:
    """``redis+sentinel://127.0.0.1:<port>/svc/0?min_replicas=1`` of a primary,
    one replica and a Sentinel started for this session: every write that
    an answer depends on waits for the replica."""
    executable, cli = _need("redis-server"), _need("redis-cli")
    try:
        group = RedisReplicated(1, executable, cli)
    except (RuntimeError, subprocess.SubprocessError) as exc:
        pytest.fail(f"Redis with Sentinel did not start: {exc}")
    with group:
        yield group.url(0, "min_replicas=1")
