"""Scenario 9: a page of the task list costs O(page), not O(table).

For each store, one owner's list is read through the middleware (``GET
/status/?limit=50``, first page and a page deep in the list by cursor) with
``n`` tasks stored (100,000; 5,000 in a quick run) and with 100; the ratio of
pages per second (big over small) should be near 1.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from asyncwsgi import AsyncMiddleware
from asyncwsgi.listing import encode_cursor
from asyncwsgi.owner import owner_hash
from asyncwsgi.results import error_result
from asyncwsgi.stores import Store, open_store
from asyncwsgi.task import TaskRecord

from .services import RedisServer
from .stand_ins import discard, trivial_app

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import WSGIEnvironment

    from .report import Figures, Row
    from .scenarios import Config

USER = "bench-user"
PAGE = 50


def _owner(environ: WSGIEnvironment) -> str:
    return USER


def _fill(store: Store, n: int) -> str:
    """``n`` tasks of one owner (a tenth done); a cursor half way down."""
    owner = owner_hash(USER)
    done = error_result(200, "ok")
    base = time.time() - n
    middle = ""
    for i in range(n):
        record = TaskRecord(f"{i:032d}", created=base + i, owner=owner, ttl=86400)
        store.create(record)
        if i % 10 == 0:
            store.finish(record.id, done)
        if i == n // 2:
            middle = record.id
    return middle


def _cursor(mw: AsyncMiddleware, middle: str) -> str:
    # The cursor of the page that ends just above the middle task.
    record = mw.store.get(middle)
    assert record is not None
    return encode_cursor(record)


def _page(mw: AsyncMiddleware, query: str) -> int:
    out: list[str] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Callable[[bytes], object]:
        out.append(status)
        return discard

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/status/", "QUERY_STRING": query,
               "SCRIPT_NAME": ""}  # fmt: skip
    body = b"".join(mw(environ, start_response))
    assert out[0].startswith("200"), out
    return len(json.loads(body)["tasks"])


def _rate(mw: AsyncMiddleware, query: str, seconds: float) -> float:
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        assert _page(mw, query) == PAGE
        count += 1
    return count / (time.perf_counter() - started)


def task_list(cfg: Config) -> Figures:
    from .scenarios import row

    n = 5_000 if cfg.quick else 100_000
    small = 100 * 2  # enough for a page below the middle too
    seconds = 0.3 if cfg.quick else 1.0
    results: dict[str, dict[str, float]] = {}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-list-") as tmp:
        redis = RedisServer() if shutil.which("redis-server") else None
        try:
            urls = {"memory": ("memory:", "memory:"),
                    "SQLite": (f"sqlite:///{tmp}/big.db", f"sqlite:///{tmp}/small.db")}  # fmt: skip
            if redis is not None:
                urls["Redis"] = (redis.url(0), redis.url(1))
            for name, (big_url, small_url) in urls.items():
                made = {}
                for size, url in (("big", big_url), ("small", small_url)):
                    store = open_store(url)
                    middle = _fill(store, n if size == "big" else small)
                    mw = AsyncMiddleware(trivial_app, paths=["/work"], store=store, owner=_owner)
                    made[size] = (mw, f"limit={PAGE}&cursor={_cursor(mw, middle)}")
                rates: dict[str, list[float]] = {"big": [], "small": [], "big deep": [],
                                                 "small deep": []}  # fmt: skip
                for r in range(cfg.rounds):
                    order = ("big", "small") if r % 2 == 0 else ("small", "big")
                    for size in order:
                        mw, deep = made[size]
                        rates[size].append(_rate(mw, f"limit={PAGE}", seconds))
                        rates[size + " deep"].append(_rate(mw, deep, seconds))
                for mw, _ in made.values():
                    mw.close()
                    mw.store.close()
                med = {key: statistics.median(values) for key, values in rates.items()}
                results[name] = med
                rows.append(row("9 task list", f"pages/s, {name}, {n:,} vs {small} stored",
                                med["big"], f"{small} stored", med["small"],
                                target=0.8))  # fmt: skip
                rows.append(row("9 task list", f"pages/s by cursor, {name}, {n:,} vs {small}",
                                med["big deep"], f"{small} stored", med["small deep"],
                                target=0.8))  # fmt: skip
        finally:
            if redis is not None:
                redis.stop()
    return {"stored": n, "page": PAGE, "pages_per_s": results, "rows": rows}
