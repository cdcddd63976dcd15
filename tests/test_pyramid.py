"""Pyramid: ``config.include("asyncwsgi.contrib.pyramid")``, views marked with
``background=True``, options from the settings, through a real Pyramid app."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from tests.helpers import serving, wait_done

pytest.importorskip("pyramid")

# WebOb 1.8, under Pyramid, imports the stdlib's deprecated cgi module.
pytestmark = pytest.mark.filterwarnings("ignore:'cgi' is deprecated:DeprecationWarning")

ROOT = Path(__file__).resolve().parent.parent


def make_app(**settings: Any) -> Any:
    from pyramid.config import Configurator
    from pyramid.httpexceptions import HTTPForbidden

    def report(request: Any) -> Any:
        task = request.environ.get("asyncwsgi.task")
        assert task is not None, "a background view runs only as a task"
        task.set_progress(1, 2, "half")
        time.sleep(float(request.params.get("sleep", 0)))
        return {"name": request.matchdict["name"], "body": request.text}

    def about(request: Any) -> str:
        return "sync"

    def guarded(request: Any) -> Any:
        raise HTTPForbidden()

    with Configurator(settings=settings) as config:
        config.include("asyncwsgi.contrib.pyramid")
        config.add_route("report", "/reports/{name}")
        config.add_view(
            report, route_name="report", request_method="POST", renderer="json", background=True
        )
        config.add_view(about, route_name="report", request_method="GET", renderer="string")
        return config.make_wsgi_app()


@pytest.fixture
def made():
    apps: list[Any] = []

    def make(**settings: Any) -> Any:
        app = make_app(**settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.registry["asyncwsgi"].close(timeout=5)


def test_a_background_view_answers_202_then_its_result(made):
    client = Client(made())
    submitted = client.post("/reports/q3", data=b"rows", content_type="text/plain")
    assert submitted.status_code == 202
    location = submitted.headers["Location"]
    assert location.startswith("/status/")
    done = wait_done(client, location)
    assert done.status_code == 200
    assert done.json == {"name": "q3", "body": "rows"}
    assert done.headers["Content-Type"].startswith("application/json")
    # The GET view on the same route stays synchronous.
    assert client.get("/reports/q3").data == b"sync"
    # The status route answers every method the middleware knows.
    assert client.delete(location).status_code == 204
    assert client.get(location).status_code == 404
    assert client.put(location).status_code == 405


def test_through_a_real_server_with_progress(made):
    app = made()
    with serving(app) as base:
        request = urllib.request.Request(base + "/reports/big?sleep=0.5", data=b"x", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
            location = response.headers["Location"]
        seen_progress = False
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(base + location, timeout=10) as polled:
                status, body = polled.status, polled.read()
            if status != 202:
                break
            seen_progress = seen_progress or json.loads(body)["progress"] is not None
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert status == 200
        assert json.loads(body) == {"name": "big", "body": "x"}
        assert seen_progress


def test_options_come_from_the_settings(made):
    app = made(**{"asyncwsgi.max_workers": "3", "asyncwsgi.status_path": "/jobs/"})
    middleware = app.registry["asyncwsgi"]
    assert (middleware.max_workers, middleware.status_path) == (3, "/jobs/")
    client = Client(app)
    location = client.post("/reports/a").headers["Location"]
    assert location.startswith("/jobs/")
    assert wait_done(client, location).status_code == 200


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"asyncwsgi.max_worker": "3"}, "'max_worker'", id="unknown"),
        pytest.param({"asyncwsgi.max_workers": "many"}, "max_workers", id="not-a-number"),
        pytest.param({"asyncwsgi.paths": "/r/*"}, "background=True", id="paths"),
    ],
)
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        make_app(**settings)


def test_the_example_from_its_ini_file(monkeypatch):
    from paste.deploy import loadapp

    app = loadapp(f"config:{ROOT / 'examples' / 'pyramid.ini'}", global_conf={})
    middleware = app.registry["asyncwsgi"]
    try:
        assert (middleware.max_workers, middleware.result_ttl) == (4, 600.0)
        app.registry.settings["step_seconds"] = "0"
        client = Client(app)
        submitted = client.post("/reports/q3")
        assert submitted.status_code == 202
        assert wait_done(client, submitted.headers["Location"]).json == {
            "report": "q3",
            "rows": 42,
        }
    finally:
        middleware.close(timeout=5)
