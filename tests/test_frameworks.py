"""Each framework integration through the framework's own request handling."""

from __future__ import annotations

import importlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware

from .apps.falcon_reports import make_falcon
from .helpers import need, wait_done
from .servers import wsgi_server


def submit_and_wait(client: Client, method: str, path: str, **kw: Any) -> Any:
    submitted = client.open(path, method=method, **kw)
    assert submitted.status_code == 202, submitted.data
    return wait_done(client, submitted.headers["Location"], headers=kw.get("headers"))


# -- Flask -------------------------------------------------------------------


def make_flask(**config: Any) -> Any:
    from flask import Flask, jsonify, request

    app = Flask("flaskapp")
    app.config.update(config)

    @app.get("/reports/<int:year>")
    def read_report(year: int) -> Any:
        return jsonify(year=year, sync=True)

    def write_report(year: int) -> Any:
        task = request.environ.get("asyncwsgi.task")
        if task is not None:
            task.set_progress(1, 2, "half")
        return jsonify(year=year, body=request.get_data(as_text=True), task=task is not None)

    app.add_url_rule("/reports/<int:year>", view_func=write_report, methods=["POST", "PUT"])

    @app.get("/plain")
    def plain() -> Any:
        return "plain"

    return app, write_report


@pytest.fixture
def flask_ext() -> Iterator[Any]:
    made: list[Any] = []
    yield made
    for ext in made:
        ext.middleware.close(timeout=5)


@pytest.mark.parametrize("before_init", [True, False], ids=["decorated-first", "init-first"])
def test_flask_background_marks_exactly_the_decorated_view(flask_ext, before_init):
    from asyncwsgi.contrib.flask import AsyncWSGI

    app, write_report = make_flask()
    aw = AsyncWSGI()
    flask_ext.append(aw)
    if before_init:
        aw.background(write_report)
        aw.init_app(app)
    else:
        aw.init_app(app)
        aw.background(write_report)
    client = Client(app)

    done = submit_and_wait(client, "POST", "/reports/2024", data="rows")
    assert done.status_code == 200
    assert done.json == {"year": 2024, "body": "rows", "task": True}
    assert submit_and_wait(client, "PUT", "/reports/7").json["task"] is True

    # The same URL's GET view, a URL the rule's converter rejects, and other
    # views stay synchronous.
    assert client.get("/reports/2024").json == {"year": 2024, "sync": True}
    assert client.post("/reports/abc").status_code == 404
    assert client.get("/plain").data == b"plain"
    assert [r.rule for r in aw.middleware.paths] == ["/reports/<int:year>"]
    assert aw.middleware.paths[0].methods == {"POST", "PUT"}


def test_flask_reads_config_and_keywords_win(flask_ext):
    from asyncwsgi.contrib.flask import AsyncWSGI

    app, _ = make_flask(
        ASYNCWSGI_PATHS=["/plain"],
        ASYNCWSGI_STATUS_PATH="/jobs/",
        ASYNCWSGI_MAX_WORKERS=2,
        ASYNCWSGI_RETRY_AFTER=3,
    )
    aw = AsyncWSGI(app, retry_after=5)
    flask_ext.append(aw)
    client = Client(app)

    submitted = client.get("/plain")
    assert submitted.status_code == 202
    assert submitted.headers["Location"].startswith("/jobs/")
    assert submitted.headers["Retry-After"] == "5"
    assert wait_done(client, submitted.headers["Location"]).data == b"plain"
    assert aw.middleware.max_workers == 2
    assert app.extensions["asyncwsgi"].middleware is aw.middleware
    with pytest.raises(TypeError, match="unknown"):
        AsyncWSGI(nonsense=1)


# -- Django ------------------------------------------------------------------

django_seen: list[Any] = []


def django_task_view(request: Any, name: str) -> Any:
    from django.db import connections
    from django.http import JsonResponse

    task = request.environ.get("asyncwsgi.task")
    if task is not None:
        task.set_progress(1, 1, "queried")
    for alias in ("default", "disk"):
        with connections[alias].cursor() as cursor:
            cursor.execute("select 1")
    django_seen.append((threading.current_thread(), connections["disk"]))
    return JsonResponse({"name": name, "task": task is not None, "method": request.method})


@pytest.fixture(scope="session")
def django_settings(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import django
    from django.conf import settings
    from django.urls import path

    if not settings.configured:
        # A urlconf is anything hashable with ``urlpatterns``: no module needed.
        urls = type(
            "urls",
            (),
            {
                "urlpatterns": [
                    path("task/<str:name>", django_task_view),
                    path("sync/<str:name>", django_task_view),
                ]
            },
        )
        settings.configure(
            DEBUG=False,
            SECRET_KEY="not-a-secret",
            ALLOWED_HOSTS=["localhost"],
            ROOT_URLCONF=urls,
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
            USE_TZ=True,
            DATABASES={
                "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
                # A file database, which Django really closes (it never closes
                # an in-memory one), kept open between requests by CONN_MAX_AGE.
                "disk": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "NAME": str(tmp_path_factory.mktemp("django") / "db.sqlite3"),
                    "CONN_MAX_AGE": 600,
                },
            },
            ASYNCWSGI={"paths": ["/task/*"], "status_path": "/jobs/", "retry_after": 2},
        )
        django.setup()
    return settings


@pytest.fixture
def django_app(django_settings, monkeypatch) -> Iterator[tuple[AsyncMiddleware, list[str]]]:
    from django.db import connections

    from asyncwsgi.contrib.django import get_wsgi_application

    closed_in: list[str] = []
    close_all = connections.close_all

    def spy() -> None:
        closed_in.append(threading.current_thread().name)
        close_all()

    monkeypatch.setattr(connections, "close_all", spy)
    django_seen.clear()
    app = get_wsgi_application(max_workers=2)
    yield app, closed_in
    app.close(timeout=5)


def test_django_task_through_the_real_handler_closes_its_connections(django_app):
    app, closed_in = django_app
    client = Client(app)
    submitted = client.post("/task/q3")
    assert submitted.status_code == 202
    assert submitted.headers["Location"].startswith("/jobs/")
    assert submitted.headers["Retry-After"] == "2"
    done = wait_done(client, submitted.headers["Location"])
    assert done.status_code == 200
    assert done.json == {"name": "q3", "task": True, "method": "POST"}

    ((thread, disk),) = django_seen
    assert thread is not threading.current_thread()
    assert closed_in == [thread.name]
    assert disk.connection is None  # closed despite CONN_MAX_AGE

    # Unmarked requests run in the server's thread and are left to Django.
    assert client.get("/sync/now").json == {"name": "now", "task": False, "method": "GET"}
    assert closed_in == [thread.name]
    assert django_seen[-1][1].connection is not None
    django_seen[-1][1].close()


# -- PasteDeploy -------------------------------------------------------------


def make_paste_app(global_conf: dict[str, str], **local_conf: str) -> Any:
    greeting = local_conf["greeting"].encode()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        task = environ.get("asyncwsgi.task")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [greeting, b" task" if task is not None else b" direct"]

    return app


PASTE_INI = """\
[pipeline:main]
pipeline = asyncwsgi inner

[filter:asyncwsgi]
use = egg:asyncwsgi-middleware
paths =
    /reports/*
    /export/<int:id>
methods = POST PUT
status_path = /jobs/
max_workers = 3
result_ttl = 60.5
owner = tests.test_frameworks:paste_owner

[app:inner]
use = call:tests.test_frameworks:make_paste_app
greeting = hello
"""


def paste_owner(environ: dict[str, Any]) -> str | None:
    return environ.get("HTTP_X_USER")


def test_paste_pipeline_from_an_ini_file(tmp_path):
    from paste.deploy import loadapp

    ini = tmp_path / "app.ini"
    ini.write_text(PASTE_INI)
    app = loadapp(f"config:{ini}")
    try:
        assert isinstance(app, AsyncMiddleware)
        assert app.paths == ["/reports/*", "/export/<int:id>"]
        assert app.methods == {"POST", "PUT"}
        assert (app.max_workers, app.result_ttl) == (3, 60.5)
        assert app.owner is paste_owner

        client = Client(app)
        user = {"X-User": "ann"}
        done = submit_and_wait(client, "POST", "/export/12", headers=user)
        assert done.data == b"hello task"
        assert submit_and_wait(client, "PUT", "/reports/q3", headers=user).data == b"hello task"
        assert client.get("/reports/q3").data == b"hello direct"
        assert client.post("/export/abc").data == b"hello direct"
    finally:
        app.close(timeout=5)


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        pytest.param({"max_workers": "many"}, "max_workers", id="not-a-number"),
        pytest.param({"colour": "blue"}, "unknown", id="unknown-option"),
        pytest.param({"owner": "no_such_module:owner"}, "owner", id="no-module"),
        pytest.param({"owner": "tests.test_frameworks:nothing"}, "owner", id="missing-attr"),
    ],
)
def test_paste_rejects_bad_options(conf, message):
    from asyncwsgi.contrib.paste import convert_options

    with pytest.raises(ValueError, match=message):
        convert_options(conf)


# -- Falcon and Bottle: plain AsyncMiddleware --------------------------------


def make_bottle() -> Any:
    import bottle

    app = bottle.Bottle()

    @app.post("/reports/<name>")
    def report(name: str) -> Any:
        task = bottle.request.environ.get("asyncwsgi.task")
        if task is not None:
            task.set_progress(1, 1, "done")
        bottle.response.status = 201
        return {"name": name, "body": bottle.request.body.read().decode()}

    @app.get("/reports/<name>")
    def read(name: str) -> Any:
        return {"name": name, "sync": True}

    return app


@pytest.mark.parametrize("make", [make_falcon, make_bottle], ids=["falcon", "bottle"])
def test_plain_middleware_around_a_framework(make):
    app = AsyncMiddleware(make(), paths=["/reports/*"], methods=["POST"])
    try:
        client = Client(app)
        done = submit_and_wait(client, "POST", "/reports/q3", data=b"rows")
        assert done.status_code == 201
        assert done.json == {"name": "q3", "body": "rows"}
        assert client.get("/reports/q3").json == {"name": "q3", "sync": True}
    finally:
        app.close(timeout=5)


@pytest.mark.slow
def test_falcon_under_waitress(tmp_path):
    """A waitress process serving the Falcon app: the 202, then the app's 201."""
    need("waitress")
    app = "tests.apps.falcon_reports:application"
    with wsgi_server("waitress", app, tmp_path / "waitress.log") as port:
        base = f"http://127.0.0.1:{port}"
        request = urllib.request.Request(f"{base}/reports/q3", data=b"rows", method="POST")
        with urllib.request.urlopen(request, timeout=10) as submitted:
            assert submitted.status == 202
            location = submitted.headers["Location"]
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(base + location, timeout=10) as polled:
                status, body = polled.status, polled.read()
            if status != 202:
                break
            assert time.monotonic() < deadline, "task still running"
            time.sleep(0.01)
    assert status == 201
    assert json.loads(body) == {"name": "q3", "body": "rows"}


# -- the examples ------------------------------------------------------------

PYRAMID_INI = """\
[app:main]
use = call:examples.pyramid_app:main
step_seconds = 0
"""


def load_example(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    if name == "pyramid":
        from paste.deploy import loadapp

        ini = tmp_path / "pyramid.ini"
        ini.write_text(PYRAMID_INI)
        return loadapp(f"config:{ini}")
    module = importlib.import_module(f"examples.{name}_app")
    monkeypatch.setattr(module, "STEP_SECONDS", 0)
    return module.app


# WebOb 1.8, under Pyramid, imports the stdlib's deprecated cgi module.
webob_cgi = pytest.mark.filterwarnings("ignore:'cgi' is deprecated:DeprecationWarning")


@pytest.mark.parametrize(
    "name", ["flask", pytest.param("pyramid", marks=webob_cgi), "falcon", "bottle"]
)
def test_example_apps_run_their_long_task(name, monkeypatch, tmp_path):
    app = load_example(name, monkeypatch, tmp_path)
    client = Client(app)
    try:
        done = submit_and_wait(client, "POST", "/reports/q3")
        assert done.status_code == 200
        assert done.json == {"report": "q3", "rows": 42}
        assert b"in the background" in client.get("/reports/q3").data
    finally:
        if name == "flask":
            app.extensions["asyncwsgi"].get().close(timeout=5)
        elif name == "pyramid":
            app.registry["asyncwsgi"].close(timeout=5)
        else:
            app.close(timeout=5)


def test_django_setting_sets_a_store_setting(django_settings, tmp_path) -> None:
    from asyncwsgi.contrib.django import get_wsgi_application

    class Settings:
        ASYNCWSGI = {
            "paths": ["/task/*"],
            "store": f"sqlite:///{tmp_path}/tasks.db",
            "busy_timeout": 2.5,
            "tombstone_ttl": 60,
        }

    app = get_wsgi_application(Settings())
    try:
        assert (app.store.timeout, app.store.tombstone_ttl) == (2.5, 60)
    finally:
        app.close(timeout=5)


def test_flask_config_sets_a_store_setting(tmp_path) -> None:
    need("flask")
    import flask

    from asyncwsgi.contrib.flask import AsyncWSGI

    app = flask.Flask(__name__)
    app.config["ASYNCWSGI_PATHS"] = ["/r/*"]
    app.config["ASYNCWSGI_STORE"] = f"sqlite:///{tmp_path}/tasks.db"
    app.config["ASYNCWSGI_BUSY_TIMEOUT"] = 1.5
    aw = AsyncWSGI(app)
    try:
        assert aw.middleware.store.timeout == 1.5
    finally:
        aw.middleware.close()
