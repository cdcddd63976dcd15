"""One table of options (asyncwsgi.options) drives every edge: the constructor,
PasteDeploy, ``asyncwsgi serve``, Flask, Django and docs/options.md's table.
Each test fails when an edge misses an option; mistakes fail at construction."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from asyncwsgi import AsyncMiddleware, MemoryStore
from asyncwsgi.options import OPTIONS, convert_options

# Most tests here build a middleware with no pattern, to look at its options:
# the warning that no request can become a task is not what they check.
pytestmark = pytest.mark.filterwarnings("ignore:asyncwsgi. no paths and no prefer_paths")

NAMES = [o.name for o in OPTIONS]
OPTIONS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "options.md"


def _app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


# -- every edge has every option -------------------------------------------


def test_constructor_takes_exactly_the_table_with_its_defaults():
    parameters = inspect.signature(AsyncMiddleware).parameters
    keyword_only = {name: p.default for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert list(keyword_only) == NAMES, "options.OPTIONS and AsyncMiddleware.__init__ differ"
    for option in OPTIONS:
        assert keyword_only[option.name] == option.default, option.name


def test_constructor_stores_every_option_as_an_attribute():
    mw = AsyncMiddleware(_app)
    try:
        for name in NAMES:
            assert hasattr(mw, name), name
    finally:
        mw.close()


def test_every_option_is_a_serve_flag():
    from asyncwsgi.cli import _parser

    parser = _parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    dests = {action.dest for action in serve._actions}
    assert set(NAMES) <= dests, set(NAMES) - dests


@pytest.mark.parametrize("name", NAMES)
def test_every_option_is_known_to_paste(name):
    try:
        convert_options({name: "1"})
    except ValueError as exc:
        assert "unknown" not in str(exc)


@pytest.mark.filterwarnings("ignore:'cgi' is deprecated:DeprecationWarning")  # WebOb 1.8
@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("paths", "prefer_paths")])
def test_every_option_is_a_pyramid_setting(name):
    pytest.importorskip("pyramid")
    from asyncwsgi.contrib.pyramid import options_from_settings

    try:
        options_from_settings({f"asyncwsgi.{name}": "1"})
    except ValueError as exc:
        assert "unknown" not in str(exc)


@pytest.mark.parametrize("name", NAMES)
def test_every_option_is_read_from_flask_config(name):
    flask = pytest.importorskip("flask")
    from asyncwsgi.contrib.flask import AsyncWSGI

    option = next(o for o in OPTIONS if o.name == name)
    app = flask.Flask(__name__)
    app.config[f"ASYNCWSGI_{name.upper()}"] = option.default
    aw = AsyncWSGI(app)
    try:
        assert aw._lazy is not None and name in aw._lazy.options
    finally:
        aw.middleware.close()


def test_the_options_page_table_lists_exactly_the_options():
    table = OPTIONS_PAGE.read_text().split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE)
    assert rows == NAMES, "docs/options.md's table and options.OPTIONS differ"


def test_the_options_page_is_made_from_the_table():
    from asyncwsgi.optionspage import page

    assert OPTIONS_PAGE.read_text() == page(), (
        "docs/options.md is stale: run python -m asyncwsgi.optionspage"
    )


def test_the_page_maker_finds_a_stale_page(tmp_path):
    from asyncwsgi.optionspage import main, page

    stale = tmp_path / "options.md"
    stale.write_text(page().replace("`max_pending` | `1000`", "`max_pending` | `999`"))
    assert main(["--check", "--path", str(stale)]) == 1
    assert main(["--path", str(stale)]) == 0
    assert main(["--check", "--path", str(stale)]) == 0


def test_every_option_has_its_meaning_written():
    assert [o.name for o in OPTIONS if not o.doc] == []


# -- serve: the flags reach the middleware ---------------------------------


def test_serve_flags_convert_like_the_ini(monkeypatch):
    from asyncwsgi import cli

    made: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def capture(app: Any, **options: Any) -> Any:
        made.update(options)
        raise Stop

    monkeypatch.setattr("asyncwsgi.middleware.AsyncMiddleware", capture)
    with pytest.raises(Stop):
        cli.main(
            [
                "serve",
                "tests.test_options:_app",
                "--path",
                "/a/*",
                "--paths",
                "/b /c",
                "--methods",
                "POST",
                "--max-pending",
                "7",
                "--timeout",
                "2.5",
            ]
        )
    assert made == {
        "paths": ["/a/*", "/b", "/c"],
        "methods": ["POST"],
        "max_pending": 7,
        "timeout": 2.5,
    }


def test_version(capsys):
    from asyncwsgi import __version__, cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"asyncwsgi {__version__}"


# -- unknown keys name themselves ------------------------------------------


def test_unknown_ini_key_is_named(tmp_path):
    from paste.deploy import loadapp

    ini = tmp_path / "app.ini"
    ini.write_text(
        "[pipeline:main]\npipeline = asyncwsgi inner\n\n"
        "[filter:asyncwsgi]\nuse = egg:asyncwsgi-middleware\npaths = /r/*\nmax_worker = 2\n\n"
        "[app:inner]\nuse = call:tests.test_options:make_app\n"
    )
    with pytest.raises(ValueError, match="unknown asyncwsgi option 'max_worker'"):
        loadapp(f"config:{ini}")


def make_app(global_conf: dict[str, str], **settings: str) -> Any:
    return _app


def test_unknown_flask_config_key_is_named():
    flask = pytest.importorskip("flask")
    from asyncwsgi.contrib.flask import AsyncWSGI

    app = flask.Flask(__name__)
    app.config["ASYNCWSGI_MAX_WORKER"] = 2
    with pytest.raises(ValueError, match="'max_worker'.*ASYNCWSGI_MAX_WORKER"):
        AsyncWSGI(app)


def test_unknown_django_setting_is_named():
    pytest.importorskip("django")
    from asyncwsgi.contrib.django import get_wsgi_application

    class Settings:
        ASYNCWSGI = {"paths": ["/r/*"], "max_worker": 2}

    with pytest.raises(ValueError, match="'max_worker'.*settings.ASYNCWSGI"):
        get_wsgi_application(Settings())


# -- mistakes fail loudly at construction ----------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"methods": "POST"}, r"methods must be a list.*write methods=", id="methods-str"
        ),
        pytest.param(
            {"paths": "/reports/*"}, r"paths must be a list.*\['/reports/\*'\]", id="paths-str"
        ),
        pytest.param({"prefer_paths": "/r/*"}, "prefer_paths must be a list", id="prefer-str"),
        pytest.param({"methods": ["POST", 1]}, "not an HTTP method", id="method-not-str"),
        pytest.param(
            {"paths": ["/status/*"]}, r"'/status/\*' overlaps status_path", id="glob-over-status"
        ),
        pytest.param({"paths": ["/status/<id>"]}, "overlaps status_path", id="rule-over-status"),
        pytest.param({"paths": ["/status/x"]}, "overlaps status_path", id="exact-under-status"),
        pytest.param(
            {"paths": ["/jobs/*"], "status_path": "/jobs/"}, "overlaps", id="custom-status-path"
        ),
        pytest.param(
            {"prefer_paths": [re.compile("/status/.*")]},
            "prefer_paths.*overlaps",
            id="prefer-over-status",
        ),
        pytest.param({"status_path": "status"}, "status_path must be a path", id="status-path"),
        pytest.param({"max_pending": 0}, "max_pending must be a whole number >= 1", id="zero"),
        pytest.param({"max_body": "10"}, "max_body must be a whole number", id="str-number"),
        pytest.param({"result_ttl": -1.0}, "result_ttl must be a number of seconds", id="ttl"),
        pytest.param({"timeout": True}, "timeout must be a number", id="bool-timeout"),
        pytest.param({"owner": "by_header"}, "owner must be a callable", id="owner-str"),
        pytest.param({"store": 3}, "store must be a Store", id="store-type"),
        pytest.param({"executor": object()}, "executor must be an asyncwsgi Executor", id="exec"),
    ],
)
def test_mistakes_fail_at_construction(options, message):
    with pytest.raises((TypeError, ValueError), match=message):
        AsyncMiddleware(_app, **options)


@pytest.mark.parametrize("pattern", ["/*", "/<path:p>"])
def test_a_pattern_for_every_path_does_not_overlap(pattern):
    AsyncMiddleware(_app, paths=[pattern]).close()


def test_max_workers_with_an_executor_is_an_error():
    from asyncwsgi import ThreadExecutor

    with pytest.raises(ValueError, match="max_workers sizes the default thread pool"):
        AsyncMiddleware(_app, executor=ThreadExecutor(2), max_workers=4)
    mw = AsyncMiddleware(_app, executor=ThreadExecutor(2))
    try:
        assert mw.max_workers is None
    finally:
        mw.close()
    mw = AsyncMiddleware(_app)
    try:
        assert mw.max_workers == 8
    finally:
        mw.close()


def test_store_url_in_a_missing_directory_names_it(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        AsyncMiddleware(_app, store=f"sqlite:///{missing}/tasks.db")


def test_close_closes_a_store_opened_from_a_url(tmp_path):
    mw = AsyncMiddleware(_app, paths=["/r/*"], store=f"sqlite:///{tmp_path}/tasks.db")
    assert mw.close() is True
    with pytest.raises(RuntimeError, match="closed"):
        mw.store.get("x" * 32)


def test_close_leaves_a_store_given_as_an_object_open():
    store = MemoryStore()
    mw = AsyncMiddleware(_app, paths=["/r/*"], store=store)
    mw.close()
    assert store.get("x" * 32) is None


# -- the stores' own settings: options and store URL parameters -------------


def test_store_settings_reach_an_sqlite_store_from_options(tmp_path):
    mw = AsyncMiddleware(
        _app,
        store=f"sqlite:///{tmp_path}/tasks.db",
        busy_timeout=2.5,
        max_tombstones=7,
        tombstone_ttl=60.0,
    )
    try:
        assert (mw.store.timeout, mw.store.max_tombstones, mw.store.tombstone_ttl) == (2.5, 7, 60.0)
        assert (mw.busy_timeout, mw.max_tombstones, mw.tombstone_ttl) == (2.5, 7, 60.0)
    finally:
        mw.close()


def test_store_settings_reach_an_sqlite_store_from_its_url(tmp_path):
    from asyncwsgi import open_store

    store = open_store(f"sqlite:///{tmp_path}/tasks.db?busy_timeout=0.5&max_tombstones=3")
    try:
        assert (store.timeout, store.max_tombstones) == (0.5, 3)
        assert store.path == str(tmp_path / "tasks.db")
    finally:
        store.close()


def test_store_settings_from_a_paste_ini(tmp_path):
    from paste.deploy import loadapp

    ini = tmp_path / "app.ini"
    ini.write_text(
        "[pipeline:main]\npipeline = asyncwsgi inner\n\n"
        "[filter:asyncwsgi]\nuse = egg:asyncwsgi-middleware\npaths = /r/*\n"
        f"store = sqlite:///{tmp_path}/tasks.db\nbusy_timeout = 1.5\ntombstone_ttl = 9\n\n"
        "[app:inner]\nuse = call:tests.test_options:make_app\n"
    )
    mw = loadapp(f"config:{ini}")
    try:
        assert (mw.store.timeout, mw.store.tombstone_ttl) == (1.5, 9.0)
    finally:
        mw.close()


def test_redis_settings_travel_in_its_url(redis_url):
    mw = AsyncMiddleware(_app, store=redis_url + "?chunk_size=1000&spool_ttl=30")
    try:
        assert (mw.store.chunk_size, mw.store.spool_ttl) == (1000, 30.0)
        # A worker opening the store by its URL gets the same chunks.
        assert "chunk_size=1000" in mw.store.url
    finally:
        mw.close()


def test_min_replicas_is_a_redis_url_parameter():
    from asyncwsgi.stores.settings import split_url, store_keywords

    url, settings = split_url("redis://127.0.0.1:6379/0?min_replicas=2&prefix=a%3A")
    assert url == "redis://127.0.0.1:6379/0?prefix=a%3A"
    assert settings == {"min_replicas": 2}
    assert store_keywords("redis", settings) == {"min_replicas": 2}
    with pytest.raises(ValueError, match="min_replicas is a setting of the redis store"):
        store_keywords("sqlite", settings)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"chunk_size": 1000}, "chunk_size is a setting of the redis store", id="kind"),
        pytest.param({"busy_timeout": -1.0}, "busy_timeout must be a number", id="negative"),
        pytest.param({"chunk_size": 0, "store": "redis://x"}, "chunk_size must be", id="zero"),
        pytest.param(
            {"store": "memory:?max_tombstones=x"}, "max_tombstones='x'", id="url-not-a-number"
        ),
        pytest.param({"store": "memory:?tombs=3"}, "unknown parameter", id="url-unknown"),
        pytest.param(
            {"store": "memory:?max_tombstones=3", "max_tombstones": 4},
            "max_tombstones is 3 in the store URL but 4",
            id="url-and-option-differ",
        ),
        pytest.param(
            {"store": MemoryStore(), "tombstone_ttl": 5.0}, "set on the store given", id="object"
        ),
    ],
)
def test_store_setting_mistakes_fail_at_construction(options, message):
    with pytest.raises((TypeError, ValueError), match=message):
        AsyncMiddleware(_app, **options)


def test_settings_have_exactly_the_table_and_are_frozen():
    import dataclasses

    from asyncwsgi.settings import Settings

    assert [f.name for f in dataclasses.fields(Settings)] == NAMES
    mw = AsyncMiddleware(_app, paths=["/r/*"], retry_after=5, max_retry_after=2)
    try:
        assert mw.settings.max_retry_after == mw.max_retry_after == 5
        with pytest.raises(dataclasses.FrozenInstanceError):
            mw.settings.max_wait = 1.0  # type: ignore[misc]
    finally:
        mw.close()


def test_every_option_is_a_typed_attribute_of_the_class():
    # Declared on the class (so type checkers know mw.max_wait is a float),
    # in the table's order.
    declared = [name for name in AsyncMiddleware.__annotations__ if name in NAMES]
    assert declared == NAMES
