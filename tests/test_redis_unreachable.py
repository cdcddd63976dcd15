"""A Redis that cannot be reached is the store's fault everywhere, never a
raw redis-py error: the reads of a spooled body (a real redis-server killed
under them), and a Redis Cluster down when the store is built (503 until it
is reachable, as with a plain Redis)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from asyncwsgi.stores import StoreUnavailable
from asyncwsgi.task import Body, TaskRecord
from bench.services import RedisClusterServers, RedisServer
from tests.helpers import wait_done
from tests.redis_fixture import _need


def _spooled(store: Any, size: int) -> tuple[Body, bytes]:
    data = secrets.token_bytes(size)
    sink = store.open_sink(secrets.token_hex(8), "result")
    sink.write(data)
    return sink.commit(len(data), "0" * 64), data


def test_reads_of_a_spooled_body_on_a_killed_redis_raise_store_unavailable() -> None:
    from asyncwsgi.stores.redis import RedisStore

    with RedisServer(_need("redis-server")) as server:
        store = RedisStore(server.url(0), prefix="unreachable-test:", chunk_size=1000)
        try:
            body, data = _spooled(store, 5500)
            assert b"".join(body.chunks(0, body.size)) == data
            with body.open() as reader:
                assert reader.read(10) == data[:10]
                server.kill()
                with pytest.raises(StoreUnavailable, match="Redis"):
                    reader.read()
            with pytest.raises(StoreUnavailable, match="Redis"):
                list(body.chunks(0, body.size))
            with pytest.raises(StoreUnavailable, match="Redis"):
                body.open()
        finally:
            store.close()


def echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"echo:" + body]


@pytest.mark.slow
def test_a_redis_cluster_down_at_start_answers_503_until_it_is_reachable() -> None:
    from asyncwsgi.stores.redis import RedisStore

    cluster = RedisClusterServers(3, _need("redis-server"), _need("redis-cli"))
    with cluster:
        url = f"redis+cluster://127.0.0.1:{cluster.ports[0]}/?prefix=%7Blazy%7D:"
        for node in cluster.nodes:
            node.kill()
        # Built while no node answers: no error until the store is used.
        store = RedisStore.from_url(url + "&socket_connect_timeout=0.5")
        middleware = AsyncMiddleware(echo, paths=["/work/*"], store=store)
        try:
            with pytest.raises(StoreUnavailable, match="Redis"):
                store.get("a" * 16)
            client = Client(middleware)
            refused = client.post("/work/1", data=b"early")
            assert refused.status_code == 503, refused.data
            assert int(refused.headers["Retry-After"]) >= 1

            # Back on the same ports, with the slots they had (nodes.conf).
            for node in cluster.nodes:
                node.start()
            deadline = time.monotonic() + 30
            while True:
                response = client.post("/work/1", data=b"later")
                if response.status_code == 202 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert response.status_code == 202, response.data
            location = response.headers["Location"]
            record = store.get(location.rsplit("/", 1)[1])
            assert isinstance(record, TaskRecord)
            # Ended before the nodes go down again, so that no task outlives
            # the test, retrying ports a later test's server may be given.
            assert wait_done(client, location).data == b"echo:later"

            # Down again once it was up: the store's fault too, not the client's.
            for node in cluster.nodes:
                node.kill()
            with pytest.raises(StoreUnavailable, match="Redis"):
                store.get(record.id)
        finally:
            middleware.close(10)
            store.close()
