"""Flask integration: ``AsyncMiddleware`` around ``app.wsgi_app``.

>>> aw = AsyncWSGI(app)                  # or AsyncWSGI() then aw.init_app(app)
>>> @app.post("/reports/<int:year>")
... @aw.background
... def report(year):
...     task = request.environ.get("asyncwsgi.task")
...     ...

Options are the keyword arguments of :class:`~asyncwsgi.AsyncMiddleware`,
read from ``app.config["ASYNCWSGI_<OPTION>"]`` (``ASYNCWSGI_PATHS``,
``ASYNCWSGI_STATUS_PATH``, ``ASYNCWSGI_STORE``, ...) as Python values;
keyword arguments given to ``AsyncWSGI`` win over the config. A config key
that starts with ``ASYNCWSGI_`` and names no option is an error.

``@aw.background`` marks the URL rules of that view, with the methods those
rules route to that view; other views on the same URL stay synchronous.

The middleware is built on the first request (or the first read of
``aw.middleware``), when the URL map is complete, so ``@aw.background`` may be
applied before or after ``init_app``. Rules added after that are not marked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from werkzeug.routing import Map, Rule

from ..middleware import AsyncMiddleware
from ..options import option
from ..patterns import Pattern

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Flask

__all__ = ["AsyncWSGI"]

logger = logging.getLogger("asyncwsgi")

F = TypeVar("F", bound=Callable[..., Any])

_PREFIX = "ASYNCWSGI_"
_IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})


class AsyncWSGI:
    """Flask extension: marked views run as background tasks.

    >>> aw = AsyncWSGI(app, store="sqlite:///tasks.db")
    >>> @app.post("/export")
    ... @aw.background
    ... def export(): ...
    """

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        for name in options:
            try:
                option(name, "the arguments of AsyncWSGI")
            except ValueError as exc:
                raise TypeError(str(exc)) from None  # as for any unexpected keyword
        self.options = options
        self.views: set[Callable[..., Any]] = set()
        self.app = app
        self._lazy: _LazyMiddleware | None = None
        if app is not None:
            self.init_app(app)

    def background(self, view: F) -> F:
        """Mark ``view``: requests routed to it become tasks."""
        self.views.add(view)
        return view

    def init_app(self, app: Flask) -> None:
        options: dict[str, Any] = {}
        for key, value in app.config.items():
            if key.startswith(_PREFIX):
                name = key[len(_PREFIX) :].lower()
                options[option(name, f"Flask config key {key}").name] = value
        options.update(self.options)
        lazy = _LazyMiddleware(self, app, app.wsgi_app, options)
        app.wsgi_app = lazy  # type: ignore[method-assign]
        app.extensions["asyncwsgi"] = lazy
        self._lazy = lazy

    @property
    def middleware(self) -> AsyncMiddleware:
        """The middleware of the app given last to ``init_app``, built now if
        no request has built it yet."""
        if self._lazy is None:
            raise RuntimeError("AsyncWSGI.init_app(app) has not been called")
        return self._lazy.get()

    def rules(self, app: Flask) -> list[Rule]:
        """One werkzeug ``Rule`` per URL rule of ``app`` routed to a marked view,
        bound to a map with the app's converters (``app.url_map.converters``),
        so a rule using a converter the app registered matches as in Flask."""
        own = Map(converters=app.url_map.converters)
        marked: list[Rule] = []
        for rule in app.url_map.iter_rules():
            if app.view_functions.get(rule.endpoint) not in self.views:
                continue
            methods = set(rule.methods or ()) - _IMPLICIT_METHODS
            if methods:
                copy = Rule(rule.rule, methods=sorted(methods))
                own.add(copy)
                marked.append(copy)
        return marked


class _LazyMiddleware:
    """Stands in for ``app.wsgi_app`` until the first request builds the middleware."""

    def __init__(
        self, ext: AsyncWSGI, app: Flask, wsgi_app: WSGIApplication, options: dict[str, Any]
    ) -> None:
        self.ext = ext
        self.app = app
        self.wsgi_app = wsgi_app
        self.options = options
        self.middleware: AsyncMiddleware | None = None
        self._lock = threading.Lock()

    def get(self) -> AsyncMiddleware:
        middleware = self.middleware
        if middleware is None:
            with self._lock:
                middleware = self.middleware
                if middleware is None:
                    options = dict(self.options)
                    paths: Iterable[Pattern] = options.pop("paths", ())
                    middleware = AsyncMiddleware(
                        self.wsgi_app,
                        paths=[*paths, *self.ext.rules(self.app)],
                        **options,
                    )
                    self.middleware = middleware
        return middleware

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            middleware = self.get()
        except Exception:
            # The integration may never take the app down with it: the request
            # goes to Flask as if asyncwsgi were not there (a marked view then
            # answers synchronously), and the next request tries again.
            logger.exception("asyncwsgi: could not set up the middleware; serving directly")
            return self.wsgi_app(environ, start_response)
        return middleware(environ, start_response)
