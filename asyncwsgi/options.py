"""The options of :class:`~asyncwsgi.AsyncMiddleware`, in one table.

Each option has a name (the keyword argument and the attribute), a converter
from a string (an ini file, a command-line flag), a default, a check of the
Python value, and one line of help. Every edge is derived from this table:
the constructor's checks (:func:`check_options`), the PasteDeploy filter,
the ``asyncwsgi serve`` flags, Flask's ``ASYNCWSGI_<OPTION>`` config and
Django's ``ASYNCWSGI`` setting, and docs/options.md (made from it); a test
holds that page and the constructor's signature to it.

To add an option: one line in ``OPTIONS`` below, and the same name and
default as a keyword-only argument of ``AsyncMiddleware.__init__``
(``tests/test_options.py`` fails until both agree).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from werkzeug.routing import Rule
from werkzeug.utils import import_string

from .executors import Executor
from .stores import Store
from .stores.settings import STORE_SETTINGS, StoreSetting

__all__ = ["OPTIONS", "Option", "check_options", "convert_options", "option"]


@dataclass(frozen=True)
class Option:
    name: str
    #: From a string (ini, command line) to the Python value.
    convert: Callable[[str], Any]
    default: Any
    #: The Python value checked (a ValueError/TypeError that says what is
    #: expected) and normalized as the middleware stores it.
    check: Callable[[str, Any], Any]
    #: One line, for ``asyncwsgi serve --help``.
    help: str
    #: The whole meaning in Markdown, for docs/options.md (generated from
    #: this table by ``python -m asyncwsgi.optionspage``).
    doc: str = ""

    @property
    def listed(self) -> bool:
        """A list, given as words (one per line or separated by spaces)."""
        return self.convert is _words


# -- converters from strings -------------------------------------------------


def _words(value: str) -> list[str]:
    """One per line or separated by spaces."""
    return value.split()


def _text(value: str) -> str:
    return value.strip()


def _optional_text(value: str) -> str | None:
    value = value.strip()
    return None if value.lower() in ("", "none") else value


def _optional_float(value: str) -> float | None:
    value = value.strip()
    return None if value.lower() in ("", "none") else float(value)


def _optional_int(value: str) -> int | None:
    value = value.strip()
    return None if value.lower() in ("", "none") else int(value)


def _optional_flag(value: str) -> bool | None:
    return None if value.strip().lower() in ("", "none") else _flag(value)


def _flag(value: str) -> bool:
    word = value.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, not {value!r}")


def _imported(value: str) -> Any:
    """``package.module:attribute`` (or ``package.module.attribute``)."""
    value = value.strip()
    if value.lower() in ("", "none"):
        return None
    return import_string(value)


def _made(value: str) -> Any:
    """An object named as ``package.module:attribute``, called with no
    arguments to make one unless it already is an instance."""
    target = _imported(value)
    if target is None or isinstance(target, Executor):
        return target
    return target()


# -- checks of Python values -------------------------------------------------


def _patterns(name: str, value: Any) -> list[Any]:
    if isinstance(value, (str, bytes, Rule, re.Pattern)):
        raise TypeError(
            f"{name} must be a list of path patterns, not one {type(value).__name__}: "
            f"write {name}=[{value!r}]"
        )
    if not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of path patterns, not {value!r}")
    return list(value)


def _methods(name: str, value: Any) -> frozenset[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of HTTP methods, not {value!r}: write {name}=[...]")
    methods = list(value)
    for method in methods:
        if not isinstance(method, str) or not method.isalpha():
            raise ValueError(f"{name}: {method!r} is not an HTTP method")
    return frozenset(m.upper() for m in methods) - {"HEAD", "OPTIONS"}


def _status_path(name: str, value: Any) -> str:
    if not isinstance(value, str) or not (value.startswith("/") and value.endswith("/")):
        raise ValueError(f"{name} must be a path that starts and ends with '/', not {value!r}")
    return value


def _count(minimum: int, optional: bool = False) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be a whole number >= {minimum}, not {value!r}")
        return value

    return check


def _seconds(positive: bool = True, optional: bool = False) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value < 0
            or (positive and value == 0)
        ):
            bound = "> 0" if positive else ">= 0"
            raise ValueError(f"{name} must be a number of seconds {bound}, not {value!r}")
        return value

    return check


def _store(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, (str, Store)):
        raise TypeError(f"{name} must be a Store, a store URL or None, not {value!r}")
    return value


def _callable(name: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable or None, not {value!r}")
    return value


def _optional_bool(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True, False or None, not {value!r}")
    return value


def _callback_allow(name: str, value: Any) -> list[str] | None:
    from .callbacks import check_allow_list

    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of URL prefixes, not {value!r}: write {name}=[...]")
    return check_allow_list(value) or None


def _callback_secret(name: str, value: Any) -> Any:
    from .callbacks import parse_secret

    if value is not None:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str ('whsec_' + base64) or None")
        parse_secret(value)
    return value


def _executor(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, Executor):
        raise TypeError(f"{name} must be an asyncwsgi Executor or None, not {value!r}")
    return value


def _base_url(name: str, value: Any) -> Any:
    if value is None:
        return None
    parts = urllib.parse.urlsplit(value) if isinstance(value, str) else None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.netloc
        or "?" in value
        or "#" in value
    ):
        raise ValueError(
            f"{name} must be an absolute http(s) URL without query or fragment, "
            f"such as 'https://api.example.com', not {value!r}"
        )
    return value.rstrip("/")


def _metrics_path(name: str, value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"{name} must be a path that starts with '/' or None, not {value!r}")
    from .metrics import AVAILABLE

    if not AVAILABLE:
        raise ValueError(
            f"{name} needs prometheus_client: pip install 'asyncwsgi-middleware[metrics]'"
        )
    return value


def _store_row(setting: StoreSetting) -> Option:
    """A store's own setting as a middleware option: None, the store's default."""

    def check(name: str, value: Any) -> Any:
        return None if value is None else setting.check(value)

    convert = _optional_int if setting.kind is int else _optional_float
    return Option(
        setting.name,
        convert,
        None,
        check,
        f"{setting.help} (None: the store's default)",
        doc=setting.doc,
    )


def _any(name: str, value: Any) -> Any:
    """For options whose value the constructor checks itself."""
    return value


# -- the table -----------------------------------------------------------------

MiB = 2**20

# fmt: off
OPTIONS: tuple[Option, ...] = (
    Option("paths", _words, (), _patterns,
           "path patterns whose requests become tasks",
           doc=(
           'patterns of paths that become tasks: exact strings, `*` globs (`*` crosses `/`), '
           'werkzeug rules (`/export/<int:id>`), `Rule` objects (their `methods` narrow the '
           'match), compiled regexes (must match the whole `PATH_INFO`)')),
    Option("methods", _words, ("GET", "POST", "PUT", "PATCH", "DELETE"), _methods,
           "methods that become tasks on marked paths (never HEAD or OPTIONS)",
           doc=(
           'methods that become tasks on marked paths; `HEAD` and `OPTIONS` never do')),
    Option("status_path", _text, "/status/", _status_path,
           "prefix of the status URLs",
           doc=(
           'prefix of status URLs, under `SCRIPT_NAME`; requests under it never reach the '
           'app')),
    Option("store", _optional_text, None, _store,
           "a Store or store URL: memory:, sqlite:///tasks.db, redis://host:6379/0",
           doc=(
           'a `Store` or a store URL (`memory:`, `sqlite:///tasks.db`, '
           '`sqlite:////abs/tasks.db`, `redis://host:6379/0`, `rediss://…`, `unix://…`, '
           '`redis+cluster://host:6379/?prefix=…`); `None` is a new in-process `MemoryStore`')),
    Option("max_workers", _optional_int, None, _count(1, optional=True),
           "threads of the default thread pool (8); not with executor",
           doc=(
           'threads in the default bounded pool (8 when not given); an error together with '
           '`executor`')),
    Option("max_pending", int, 1000, _count(1),
           "queued plus running tasks; beyond it submissions get 503",
           doc=(
           'queued plus running tasks; beyond it submissions get `503`')),
    Option("result_ttl", float, 300.0, _seconds(positive=False),
           "seconds a finished result is kept",
           doc=(
           'seconds a finished result is kept')),
    Option("max_body", int, 10 * MiB, _count(0),
           "request body bytes; beyond it 413",
           doc=(
           'request body bytes; beyond it `413`')),
    Option("max_result", int, 1024 * MiB, _count(0),
           "bytes of the captured response, status line, headers and body together; "
           "beyond it the task fails as 500 (result too large)",
           doc=(
           'bytes of the captured response, status line, headers and body together (what is '
           'stored); beyond it the task fails as `500` saying the result was too large')),
    Option("spool_threshold", int, 1 * MiB, _count(0),
           "body bytes kept in memory; larger results and request bodies go to the store",
           doc=(
           'body bytes kept in memory; larger results and request bodies go to the store '
           '([large results](results.md))')),
    Option("max_stored_bytes", _optional_int, None, _count(0, optional=True),
           "bytes of spooled bodies a store holds; a large result reserves max_result of it "
           "first, new tasks get 503 without room (None: the store's default)",
           doc=(
           "bytes of spooled bodies a store holds (the memory store's default: 8 GiB); a "
           'large result reserves `max_result` of it before it writes (and waits for room, '
           'never fails for want of it); new tasks get `503` without room')),
    Option("results_dir", _optional_text, None, _any,
           "directory of spooled bodies (memory and SQLite stores)",
           doc=(
           'directory of spooled bodies (memory store: a temporary directory; SQLite: beside '
           'the database)')),
    *map(_store_row, STORE_SETTINGS),
    Option("retry_after", int, 1, _count(0),
           "seconds of Retry-After sent with a 202 (the starting value)",
           doc=(
           'seconds, sent with every `202` (the starting value)')),
    Option("max_retry_after", int, 30, _count(0),
           "cap of the adaptive Retry-After",
           doc=(
           'the cap on the adaptive `Retry-After`')),
    Option("prefer_paths", _words, (), _patterns,
           "path patterns that become tasks only with Prefer: respond-async",
           doc=(
           'patterns where a request becomes a task only with `Prefer: respond-async`')),
    Option("max_wait", float, 10.0, _seconds(positive=False),
           "cap in seconds of any Prefer: wait=N (under gunicorn's 30 s worker timeout)",
           doc=(
           "cap in seconds on any `Prefer: wait=N`; kept well under gunicorn's 30 s sync "
           'worker timeout (see [faults.md](faults.md#long-polls))')),
    Option("max_waiting", _optional_int, None, _count(0, optional=True),
           "requests of one process that may wait at once (default: one fewer than the "
           "server's threads); others are answered at once",
           doc=(
           'requests of one process that may wait (`Prefer: wait`, event streams) at once; '
           'beyond it a request is answered at once, without `Preference-Applied`, so waits '
           'never hold every server thread. `None` follows the server: one fewer than the '
           'server threads that have brought this process a submission or a status request '
           'so far, never below 2 (gunicorn gthread `--threads 8`: 7; waitress with its 4 '
           'threads: 3; a sync worker answers one request at a time, so that one may wait)')),
    Option("owner", _imported, None, _callable,
           "owner(environ) -> str or None: binds each task to its submitter",
           doc=(
           "`owner(environ) -> str | None`; binds each task to the submitter's value: status "
           'requests with another or no value get `404`, as an unknown id; a submission '
           'without a value gets `403`; only a SHA-256 of the value is stored. Ready-made: '
           '`asyncwsgi.owner.by_header("Authorization")`, `by_cookie("session")`, '
           '`by_remote_user`')),
    Option("lease", float, 30.0, _seconds(),
           "seconds a shared store's task may miss its heartbeat before it is lost",
           doc=(
           "with a shared store: seconds a task's heartbeat may be missed before any process "
           'that reads it completes it as `500` "the worker running this task was lost"; '
           "this covers running tasks and tasks queued in a process's own pool (those end as "
           '`503` "the task was not started in time": they never ran), so a killed worker '
           'leaves none at `202` (tasks are never re-run: the work may not be idempotent)')),
    Option("timeout", _optional_float, None, _seconds(optional=True),
           "seconds from acceptance after which an unfinished task ends as 504",
           doc=(
           'seconds from acceptance after which a task not yet done (queued or running) ends '
           "as `504`; the app's thread is left to finish and its late result is dropped")),
    Option("queue_timeout", float, 600.0, _seconds(),
           "seconds a task may wait in a broker queue before it ends as 503",
           doc=(
           "seconds a task may wait in a broker's queue (Celery, RQ, Django Tasks) before it "
           'ends as `503` "the task was not started in time"; applied by whichever process '
           "reads it first (the deadline is in the task's record) and by the engine "
           "(Celery's `expires`, RQ's `ttl`), so a worker that comes later never runs it")),
    Option("executor", _made, None, _executor,
           "where tasks run; None: the thread pool of max_workers",
           doc=(
           'where tasks run; `None` is the thread pool of `max_workers`; '
           '`asyncwsgi.executors.celery.CeleryExecutor` runs them on Celery workers')),
    Option("location_base", _optional_text, None, _base_url,
           "absolute base of status URLs (https://api.example.com); never from Host",
           doc=(
           'absolute base of status URLs, such as `https://api.example.com`: `Location` is '
           "then absolute, never built from the request's `Host` (see "
           '[client.md](client.md))')),
    Option("metrics_path", _optional_text, None, _metrics_path,
           "path answered with the Prometheus metrics (needs prometheus_client); off by default",
           doc=(
           'a path (such as `/metrics`) answered by the middleware with the Prometheus '
           'metrics, never reaching the app; setting it switches counting on in the '
           "process; needs `pip install 'asyncwsgi-middleware[metrics]'`; see "
           '[operating.md](operating.md)')),
    Option("list_tasks", _optional_flag, None, _optional_bool,
           "GET on status_path lists tasks; None: only when owner is set",
           doc=(
           "`GET` on `status_path` itself lists the caller's tasks; `None`: on only when "
           '`owner` is set; `True` also without an owner (every task is listed to everyone) '
           '([push](push.md#the-task-list))')),
    Option("callback_allow", _words, None, _callback_allow,
           "URL prefixes a Callback-URL may start with; None: callbacks off",
           doc=(
           'URL prefixes (each at least `https://host/`) a `Callback-URL` may start with; '
           '`None`: callbacks off, the header ignored ([push](push.md#completion-callbacks))')),
    Option("callback_secret", _optional_text, None, _callback_secret,
           "Standard Webhooks secret (whsec_...) that signs the callbacks",
           doc=(
           'the Standard Webhooks secret (`whsec_` + base64, 24 bytes or more) that signs '
           'every callback; required with `callback_allow`')),
)
# fmt: on

_BY_NAME: Mapping[str, Option] = {o.name: o for o in OPTIONS}


def option(name: str, where: str = "") -> Option:
    """The option called ``name``; an unknown name is a ValueError naming it
    (and ``where`` it was found: an ini section, a config key)."""
    found = _BY_NAME.get(name)
    if found is None:
        place = f" (in {where})" if where else ""
        raise ValueError(
            f"unknown asyncwsgi option {name!r}{place}; the options are: "
            + ", ".join(o.name for o in OPTIONS)
        )
    return found


def convert_options(strings: Mapping[str, str], where: str = "") -> dict[str, Any]:
    """Keyword arguments of ``AsyncMiddleware`` from strings (an ini section)."""
    values: dict[str, Any] = {}
    for name, text in strings.items():
        converter = option(name, where).convert
        try:
            values[name] = converter(text)
        except (ValueError, ImportError, AttributeError, TypeError) as exc:
            raise ValueError(f"asyncwsgi option {name} = {text!r}: {exc}") from exc
    return values


def check_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every option's value from ``values`` (the constructor's ``locals()``),
    checked and normalized; the first mistake is raised with what is expected."""
    return {o.name: o.check(o.name, values[o.name]) for o in OPTIONS}
