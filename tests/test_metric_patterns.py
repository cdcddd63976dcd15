"""Metrics are labelled with the configured pattern that made a request a task
(``pattern="/reports/*"``), never with its path: in the scrape of the
middleware's ``metrics_path``, and on a real RQ worker that ran the task."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.routing import Map, Rule
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from asyncwsgi.patterns import Pattern, compile_patterns
from bench.services import RedisServer
from tests.helpers import need, rq_worker, wait_done

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.test_metric_patterns:app"


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def labelled(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples named ``name`` in a scrape, by their sorted labels."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def by_pattern(text: str, name: str, **labels: str) -> dict[str, float]:
    """``name``'s samples with ``labels``, by their pattern label."""
    found: dict[str, float] = {}
    for key, value in labelled(text, name).items():
        keyed = dict(key)
        if all(keyed.get(k) == v for k, v in labels.items()):
            found[keyed["pattern"]] = value
    return found


@pytest.mark.parametrize(
    ("patterns", "path", "method", "label"),
    [
        pytest.param(["/export"], "/export", "POST", "/export", id="exact"),
        pytest.param(["/reports/*"], "/reports/2024/q1", "POST", "/reports/*", id="wildcard"),
        pytest.param(["/a/*", "/a/b/*"], "/a/b/c", "POST", "/a/*", id="first-wildcard-in-order"),
        pytest.param(["/a/*", "/b/*"], "/b/c", "POST", "/b/*", id="second-wildcard"),
        pytest.param(["/a/*", "/a/b"], "/a/b", "POST", "/a/b", id="exact-before-wildcard"),
        pytest.param(
            [re.compile(r"/jobs/\d+")], "/jobs/42", "POST", r"/jobs/\d+", id="regex-source"
        ),
        pytest.param(
            [re.compile(r"/Jobs/\d+", re.IGNORECASE)],
            "/jobs/7",
            "POST",
            r"/Jobs/\d+",
            id="regex-with-flags",
        ),  # fmt: skip
        pytest.param(["/items/<int:id>"], "/items/3", "POST", "/items/<int:id>", id="rule-string"),
        pytest.param(
            [Rule("/r/<name>", methods=["PUT"])], "/r/x", "PUT", "/r/<name>", id="werkzeug-rule"
        ),
        pytest.param(["/items/<int:id>"], "/items/x", "POST", None, id="rule-miss"),
        pytest.param(["/reports/*", "/export"], "/elsewhere", "POST", None, id="miss"),
        pytest.param(
            [re.compile("(?P<x>/a)"), "/b/*"], "/b/c", "POST", "/b/*", id="after-a-regex-group"
        ),
    ],
)
def test_the_matcher_answers_the_pattern_that_matched(
    patterns: list[Pattern], path: str, method: str, label: str | None
) -> None:
    assert compile_patterns(patterns)(path, method) == label


def test_rules_of_a_map_answer_their_rule() -> None:
    url_map = Map([Rule("/export/<int:year>", endpoint="export")])
    (rule,) = url_map.iter_rules()
    assert compile_patterns([rule])("/export/2024", "GET") == "/export/<int:year>"


def test_task_metrics_are_labelled_by_the_pattern_not_the_path(wrap: Any) -> None:
    # Patterns no other test configures: the metrics are the process's, shared
    # by every middleware (and test) in it.
    patterns: list[Pattern] = [
        "/lbl-reports/*", "/lbl-export", re.compile(r"/lbl-jobs/\d+"), "/lbl-items/<int:id>",
    ]  # fmt: skip
    middleware = wrap(
        app, paths=patterns, prefer_paths=["/lbl-maybe/*"], metrics_path="/metrics", max_body=10
    )
    client = Client(middleware)
    configured = {
        "/lbl-reports/*", "/lbl-export", r"/lbl-jobs/\d+", "/lbl-items/<int:id>", "/lbl-maybe/*",
    }  # fmt: skip

    def ours(text: str, name: str, **labels: str) -> dict[str, float]:
        found = by_pattern(text, name, **labels)
        return {pattern: value for pattern, value in found.items() if pattern in configured}

    # Every configured pattern's series exist before its first task, at 0.
    before = client.get("/metrics").get_data(as_text=True)
    assert ours(before, "asyncwsgi_tasks_accepted_total") == dict.fromkeys(configured, 0.0)
    assert ours(before, "asyncwsgi_tasks_rejected_total", reason="too_large") == (
        dict.fromkeys(configured, 0.0)
    )
    for histogram in ("asyncwsgi_task_queue_wait_seconds", "asyncwsgi_task_run_seconds"):
        assert ours(before, histogram + "_count") == dict.fromkeys(configured, 0.0)

    paths = ["/lbl-reports/2024", "/lbl-reports/2025/q1", "/lbl-export", "/lbl-jobs/7"]
    paths.append("/lbl-items/3")
    locations = [client.post(path).headers["Location"] for path in paths]
    async_preferred = client.post("/lbl-maybe/x", headers={"Prefer": "respond-async"})
    locations.append(async_preferred.headers["Location"])
    assert client.post("/lbl-reports/big", data=b"x" * 11).status_code == 413
    for location in locations:
        assert wait_done(client, location).status_code == 200

    text = client.get("/metrics").get_data(as_text=True)
    ran = dict.fromkeys(configured, 1.0)
    ran["/lbl-reports/*"] = 2.0
    assert ours(text, "asyncwsgi_tasks_accepted_total") == ran
    rejected = ours(text, "asyncwsgi_tasks_rejected_total", reason="too_large")
    assert rejected == {**dict.fromkeys(configured, 0.0), "/lbl-reports/*": 1.0}
    for histogram in ("asyncwsgi_task_queue_wait_seconds", "asyncwsgi_task_run_seconds"):
        assert ours(text, histogram + "_count") == ran

    # Bounded: the label values this test added are its patterns, never a path.
    def values(scrape: str) -> set[str | None]:
        return {
            dict(key).get("pattern")
            for name in ("asyncwsgi_tasks_accepted_total", "asyncwsgi_task_run_seconds_bucket")
            for key in labelled(scrape, name)
        }

    assert values(text) - values(before) == set()
    assert configured <= values(text)
    for path in set(paths) - configured:
        assert f'"{path}"' not in text


# -- a real RQ worker ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_rq_worker_labels_the_tasks_it_runs_with_their_pattern(tmp_path: Path) -> None:
    need("rq", programs=("redis-server",))
    import redis
    import rq
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from asyncwsgi.executors.rq import RQExecutor

    executable = shutil.which("redis-server")
    assert executable is not None
    metrics_dir = tmp_path / "worker-metrics"
    metrics_dir.mkdir()
    with RedisServer(executable) as server:
        connection = redis.Redis.from_url(server.url(0))
        queue = rq.Queue("reports", connection=connection)
        middleware = AsyncMiddleware(
            app,
            paths=["/reports/*", "/export"],
            store=server.url(1),
            executor=RQExecutor(queue, APP),
        )
        try:
            client = Client(middleware)
            paths = ["/reports/a", "/reports/b", "/export"]
            locations = [client.post(path).headers["Location"] for path in paths]
            with rq_worker(
                server.url(0),
                worker_class="rq.Worker",
                env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
            ):
                for location in locations:
                    assert wait_done(client, location, timeout=60).status_code == 200
        finally:
            middleware.close(timeout=1)
            middleware.store.close()
            connection.close()

    # What the worker's processes counted, as a scrape of that directory reports.
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    for name in ("asyncwsgi_task_run_seconds_count", "asyncwsgi_task_queue_wait_seconds_count"):
        assert registry.get_sample_value(name, {"pattern": "/reports/*"}) == 2
        assert registry.get_sample_value(name, {"pattern": "/export"}) == 1
    values = {
        sample.labels.get("pattern")
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "asyncwsgi_task_run_seconds_count"
    }
    assert values == {"/reports/*", "/export"}
