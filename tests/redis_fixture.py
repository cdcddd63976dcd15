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

from bench.services import RedisClusterServers, RedisServer
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
