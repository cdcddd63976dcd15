"""An app behind AsyncMiddleware on a replicated Redis, for the failover tests.

The store URL comes from ``ASYNCWSGI_TEST_STORE``, the lease (seconds) from
``ASYNCWSGI_TEST_LEASE``. ``POST /work/<n>`` answers ``200`` with a body of
64 KiB made from ``<n>`` (:func:`tests.failover.expected`), after
``ms`` milliseconds from the query string (none by default), so that a test
can tell the app's own answer from any other.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from asyncwsgi import AsyncMiddleware
from tests.failover import expected

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def inner(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    ms = parse_qs(environ.get("QUERY_STRING", "")).get("ms")
    if ms:
        time.sleep(float(ms[0]) / 1000)
    body = expected(environ.get("PATH_INFO", ""))
    start_response(
        "200 OK",
        [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))],
    )
    return [body]


application = AsyncMiddleware(
    inner,
    paths=["/work/*"],
    store=os.environ["ASYNCWSGI_TEST_STORE"],
    lease=float(os.environ.get("ASYNCWSGI_TEST_LEASE", "30")),
    max_workers=4,
)
