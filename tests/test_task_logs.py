"""Log records that name their task, and no secret in any log line, metric or
span."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from werkzeug.test import Client

from asyncwsgi.logs import TaskIdFilter, current_task_id
from tests.helpers import wait_done
from tests.test_tracing import spans  # noqa: F401 (fixture)

app_logger = logging.getLogger("tests.the_app")


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    app_logger.info("handling %s", path)
    if path == "/work/fail":
        raise RuntimeError("the app failed")
    if path == "/work/slow":
        time.sleep(0.5)
    if path == "/work/hold":
        task = environ["asyncwsgi.task"]
        deadline = time.monotonic() + 5
        while not task.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock_:
            self.records.append(record)


@pytest.fixture
def collected() -> Iterable[Collect]:
    """Every record of asyncwsgi and of the app, the app's through the filter."""
    handler = Collect()
    handler.addFilter(TaskIdFilter())
    loggers = [logging.getLogger("asyncwsgi"), app_logger]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def settle(handler: Collect, count: int) -> list[logging.LogRecord]:
    deadline = time.monotonic() + 5
    while len(handler.records) < count:
        assert time.monotonic() < deadline, [r.getMessage() for r in handler.records]
        time.sleep(0.01)
    time.sleep(0.05)
    return list(handler.records)


@pytest.mark.parametrize(
    ("path", "status", "expected"),
    [
        pytest.param("/work/ok", 200, ["accepted", "started", "finished: 200"], id="ok"),
        pytest.param(
            "/work/fail", 500, ["accepted", "started", "failed in the app", "finished: 500"],
            id="failing",
        ),
        pytest.param(
            "/work/slow", 504, ["accepted", "started", "ran past its timeout", "finished: 504"],
            id="timed-out",
        ),
    ],
)  # fmt: skip
def test_every_record_of_a_task_names_it(
    wrap: Any, collected: Collect, path: str, status: int, expected: list[str]
) -> None:
    client = Client(wrap(app, timeout=0.2))
    # The build's own line (the patterns in force) is about no task.
    collected.records.clear()
    response = client.post(path)
    task_id = response.json["id"]
    assert wait_done(client, response.headers["Location"]).status_code == status
    records = settle(collected, len(expected) + 1)
    ours = [r for r in records if r.name == "asyncwsgi"]
    for fragment in expected:
        assert any(fragment in r.getMessage() for r in ours), (fragment, ours)
    for record in ours:
        assert record.task_id == task_id  # type: ignore[attr-defined]
        assert task_id in record.getMessage()
    # The app's own record, during the task, got the id from the filter.
    (handling,) = [r for r in records if r.name == app_logger.name]
    assert handling.task_id == task_id  # type: ignore[attr-defined]


def test_cancelled_task(wrap: Any, collected: Collect) -> None:
    client = Client(wrap(app))
    # The build's own line (the patterns in force) is about no task.
    collected.records.clear()
    response = client.post("/work/hold")
    task_id = response.json["id"]
    settle(collected, 3)  # accepted, started, the app's "handling"
    assert client.delete(response.headers["Location"]).status_code == 204
    records = settle(collected, 4)
    assert any("cancelled" in r.getMessage() for r in records)
    for record in records:
        assert record.task_id == task_id  # type: ignore[attr-defined]


def test_the_filter_outside_a_task(collected: Collect) -> None:
    app_logger.info("not in a task")
    assert collected.records[-1].task_id == "-"  # type: ignore[attr-defined]
    token = current_task_id.set("abc")
    try:
        app_logger.info("in one")
    finally:
        current_task_id.reset(token)
    assert collected.records[-1].task_id == "abc"  # type: ignore[attr-defined]


SECRETS = ("Bearer s3cret-t0ken", "owner-s3cret-alice", "b0dy-s3cret-payload")


def test_no_secret_in_logs_metrics_or_spans(
    wrap: Any,
    collected: Collect,
    spans: InMemorySpanExporter,  # noqa: F811
) -> None:
    from prometheus_client import generate_latest

    middleware = wrap(
        app,
        owner=lambda environ: environ.get("HTTP_X_OWNER"),
        metrics_path="/metrics",
        max_body=100,
        timeout=0.2,
    )
    client = Client(middleware)
    headers = {"Authorization": SECRETS[0], "X-Owner": SECRETS[1]}
    body = SECRETS[2].encode()
    locations = [
        client.post(path, data=body, headers={**headers, "Idempotency-Key": path}).headers[
            "Location"
        ]
        for path in ("/work/ok", "/work/fail", "/work/slow", "/work/hold")
    ]
    assert client.post("/work/ok", data=body * 10, headers=headers).status_code == 413
    waited = client.post("/work/ok", data=body, headers={**headers, "Prefer": "wait=5"})
    assert waited.status_code == 200
    client.delete(locations[3], headers=headers)
    for location in locations[:3]:
        wait_done(client, location, headers=headers)
    time.sleep(0.2)

    formatter = logging.Formatter("%(name)s %(levelname)s %(task_id)s %(message)s")
    lines = [formatter.format(record) for record in collected.records]
    assert any("failed in the app" in line for line in lines)  # tracebacks included
    scraped = client.get("/metrics").get_data(as_text=True)
    scraped += generate_latest(middleware.metrics_registry).decode()
    ours = [s for s in spans.get_finished_spans() if s.name.startswith("asyncwsgi")]
    assert {s.name for s in ours} == {"asyncwsgi submit", "asyncwsgi queue", "asyncwsgi run"}
    exported = [s.to_json() for s in ours]
    for secret in SECRETS:
        for text in (*lines, scraped, *exported):
            assert secret not in text
