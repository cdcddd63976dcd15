"""Pyramid integration: views added with ``background=True`` run as tasks.

>>> config.include("asyncwsgi.contrib.pyramid")
>>> config.add_view(report, route_name="report", request_method="POST",
...                 renderer="json", background=True)

Options are read from the app's settings (its ini section) as
``asyncwsgi.<option>`` strings, converted like the PasteDeploy filter's
(``asyncwsgi.store = sqlite:///tasks.db``, ``asyncwsgi.max_workers = 4``); an
``asyncwsgi.`` key that names no option is an error. Views are marked by
``background=True``, so ``paths`` and ``prefer_paths`` are not taken here.

A marked view's request is handed to the :class:`~asyncwsgi.AsyncMiddleware`
(its answer, a 202, becomes the view's response through WebOb); the task
replays the request through the whole Pyramid app, tweens and security
included, and the view then runs for real. Status URLs are a route of the
app (``asyncwsgi.status``), so the app's security applies to them too. The
middleware is built when the app is (``config.make_wsgi_app()``) and kept in
the registry: ``registry["asyncwsgi"]`` (call its ``close()`` at shutdown).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import webob
from pyramid.events import ApplicationCreated
from pyramid.response import Response

from ..middleware import AsyncMiddleware
from ..options import convert_options, option

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from pyramid.config import Configurator

__all__ = ["includeme", "options_from_settings"]

PREFIX = "asyncwsgi."
REGISTRY_KEY = "asyncwsgi"
# Views are marked one by one; the middleware takes whatever they hand it.
_EVERYTHING = ["*"]
# What Pyramid and WebOb keep in the environ about this request (its route,
# the request's attributes, parsed caches): a task's request starts afresh.
_REQUEST_STATE = ("webob.", "bfg.", "pyramid.")

View = Callable[[Any, Any], Any]


class _Exact(Response):  # type: ignore[misc]
    """The middleware's answer passed on as it was written: WebOb's own
    ``__call__`` would make the status URL's relative ``Location`` absolute,
    and a replayed result must stay the app's response exactly."""

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        start_response(self.status, self.headerlist)
        return self.app_iter


class _Request(webob.Request):
    ResponseClass = _Exact


def options_from_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``AsyncMiddleware``'s keyword arguments from ``asyncwsgi.*`` settings
    (strings are converted; other values are taken as they are)."""
    where = "the Pyramid settings (asyncwsgi.*)"
    strings: dict[str, str] = {}
    values: dict[str, Any] = {}
    for key, value in settings.items():
        if not key.startswith(PREFIX):
            continue
        name = option(key[len(PREFIX) :], where).name
        if name in ("paths", "prefer_paths"):
            raise ValueError(f"setting {key}: with Pyramid, mark views with background=True")
        if isinstance(value, str):
            strings[name] = value
        else:
            values[name] = value
    return {**convert_options(strings, where), **values}


def includeme(config: Configurator) -> None:
    options = options_from_settings(config.get_settings())
    status_path = options.get("status_path", "/status/")
    config.add_view_deriver(background_view)
    config.add_route("asyncwsgi.status", status_path + "*rest")
    config.add_view(_handed_over, route_name="asyncwsgi.status")

    def build(event: Any) -> None:
        router = event.app
        router.registry[REGISTRY_KEY] = AsyncMiddleware(router, paths=_EVERYTHING, **options)

    config.add_subscriber(build, ApplicationCreated)


def background_view(view: View, info: Any) -> View:
    """The view deriver behind ``add_view(..., background=True)``."""
    if not info.options.get("background"):
        return view

    def run_in_background(context: Any, request: Any) -> Any:
        middleware = request.registry.get(REGISTRY_KEY)
        if (
            "asyncwsgi.task" in request.environ  # the task itself: run the view
            or middleware is None
            or request.method not in middleware.methods
        ):
            return view(context, request)
        return _handed_over(request)

    return run_in_background


background_view.options = ("background",)  # type: ignore[attr-defined]


def _handed_over(request: Any) -> Response:
    """The middleware's answer to this request (a 202, a status answer), as
    a Pyramid response."""
    middleware: AsyncMiddleware = request.registry[REGISTRY_KEY]
    environ = {k: v for k, v in request.environ.items() if not k.startswith(_REQUEST_STATE)}
    response: Response = _Request(environ).get_response(middleware)
    return response
