"""A process that accepts two tasks, then exits gracefully or is killed: for
tests/test_fault_injection.py.

``python -m tests.apps.fault_process STORE_URL LEASE``: one pool thread; it
submits ``/work/slow`` (runs 1.5 s) and ``/work/queued`` (queued behind it),
prints their status paths and ``ready``, then idles. SIGTERM makes it exit
the ordinary way (``sys.exit``), as a server's graceful stop does.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterable
from typing import Any

from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/work/slow":
        time.sleep(1.5)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done " + path.encode()]


def _exit(signum: int, frame: object) -> None:
    sys.exit(0)


application: AsyncMiddleware | None = None


def main() -> None:
    global application  # a server keeps its application for its whole life
    url, lease = sys.argv[1], float(sys.argv[2])
    application = mw = AsyncMiddleware(
        app, paths=["/work/*"], store=url, lease=lease, max_workers=1
    )
    client = Client(mw)
    locations = [client.post(path).headers["Location"] for path in ("/work/slow", "/work/queued")]
    first = locations[0].rsplit("/", 1)[1]
    while (record := mw.store.get(first)) is None or record.state != "running":
        time.sleep(0.01)
    for location in locations:
        print(location, flush=True)
    signal.signal(signal.SIGTERM, _exit)
    print("ready", flush=True)
    while True:
        time.sleep(0.1)


if __name__ == "__main__":
    main()
