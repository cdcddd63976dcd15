"""The job message: one typed shape for every executor, its round trip
field by field, and a clear refusal of what a worker cannot read."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from asyncwsgi.executors.worker import run_message
from asyncwsgi.job import VERSION, BadJobMessage, Job
from asyncwsgi.stores import SQLiteStore, Store
from asyncwsgi.task import TaskRecord


def _job(**fields: Any) -> Job:
    values: dict[str, Any] = {
        "task_id": "t1",
        "environ": {"PATH_INFO": "/work/x", "HTTP_X": "é", "wsgi.multiprocess": True},
        "body": b"\x00\xffbody",
        "accepted": 1_700_000_000.25,
        "pattern": "/work/*",
        "deadline": 1_700_000_030.5,
        "queued_until": 1_700_000_600.0,
        "store": "sqlite:///tasks.db",
        "max_result": 2**20 + 7,
        "max_stored_bytes": 3 * 2**20,
        "lease": 2.5,
        "spool_threshold": 65536,
        **fields,
    }
    return Job(**values)


def _no_store(url: str, max_stored_bytes: int | None) -> Store:
    raise AssertionError(f"a body in the message needs no store ({url})")


def _through_json(job: Job) -> Any:
    return json.loads(json.dumps(job.encode()))


def test_every_field_survives_the_round_trip() -> None:
    job = _job()
    back = Job.decode(_through_json(job), _no_store)
    for field in dataclasses.fields(Job):
        expected = getattr(job, field.name)
        assert getattr(back, field.name) == expected, field.name
    assert back == job


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"pattern": None}, id="no-pattern"),
        pytest.param({"deadline": None, "queued_until": None}, id="no-deadlines"),
        pytest.param({"max_stored_bytes": None}, id="no-budget"),
        pytest.param({"body": b""}, id="empty-body"),
    ],
)
def test_optional_fields_survive_as_none(fields: dict[str, Any]) -> None:
    job = _job(**fields)
    assert Job.decode(_through_json(job), _no_store) == job


def test_the_in_process_trace_context_stays_behind() -> None:
    context = object()  # an OpenTelemetry SpanContext in real use
    message = _through_json(_job(trace_parent=context))
    assert "trace_parent" not in message
    assert Job.decode(message, _no_store).trace_parent is None


def test_only_the_json_safe_environ_crosses() -> None:
    job = _job(environ={"PATH_INFO": "/x", "wsgi.version": (1, 0), "outer.object": object()})
    assert job.encode()["environ"] == {"PATH_INFO": "/x"}


def test_a_spooled_body_crosses_as_its_size_and_digest(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "tasks.db"))
    try:
        data = b"spooled " * 10_000
        sink = store.open_sink("t1", "request")
        sink.write(data)
        body = sink.commit(len(data), hashlib.sha256(data).hexdigest())
        sink.close()
        message = _through_json(_job(body=body, store="sqlite:///" + str(tmp_path / "tasks.db")))
        assert message["body"] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        opened: list[tuple[str, int | None]] = []

        def stores(url: str, max_stored_bytes: int | None) -> Store:
            opened.append((url, max_stored_bytes))
            return store

        back = Job.decode(message, stores)
        assert opened == [(message["store"], message["max_stored_bytes"])]
        assert not isinstance(back.body, bytes)
        with back.body.open() as reader:
            assert reader.read() == data
    finally:
        store.close()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        pytest.param({"version": VERSION + 1}, "2: this worker reads version 1", id="new"),
        pytest.param({"version": None}, "version None", id="no-version"),
        pytest.param({"max_stored_bytes": "3"}, "'max_stored_bytes' is not an integer", id="type"),
        pytest.param({"lease": float("nan")}, "'lease' is not finite", id="nan"),
        pytest.param({"body": 3}, "'body' is neither", id="body"),
        pytest.param({"body": "not base64!"}, "'body' is not base64", id="base64"),
        pytest.param({"extra": 1}, "unknown fields: extra", id="unknown-field"),
    ],
)
def test_a_message_the_worker_cannot_read_is_refused_clearly(
    change: dict[str, Any], error: str
) -> None:
    message = {**_job().encode(), **change}
    with pytest.raises(BadJobMessage, match=error):
        Job.decode(message, _no_store)


def test_a_missing_field_is_named() -> None:
    message = _job().encode()
    del message["max_result"]
    with pytest.raises(BadJobMessage, match="'max_result' is missing"):
        Job.decode(message, _no_store)
    with pytest.raises(BadJobMessage, match="JSON object, not list"):
        Job.decode([1, 2], _no_store)


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    raise AssertionError("a refused job never reaches the app")


def test_a_worker_ends_the_task_of_a_message_of_another_version(tmp_path: Path) -> None:
    url = "sqlite:///" + str(tmp_path / "tasks.db")
    store = SQLiteStore(str(tmp_path / "tasks.db"))
    try:
        store.create(TaskRecord("t1"))
        run_message("tests.test_job:_app", {**_job(store=url).encode(), "version": 99})
        record = store.get("t1")
        assert record is not None and record.result is not None
        assert record.result.status.startswith("500")
        assert b"job message version 99" in bytes(record.result.body)  # type: ignore[arg-type]
    finally:
        store.close()
