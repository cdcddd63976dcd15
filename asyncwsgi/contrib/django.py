"""Django integration: Django's WSGI application wrapped in ``AsyncMiddleware``.

In ``wsgi.py``::

    from asyncwsgi.contrib.django import get_wsgi_application
    application = get_wsgi_application()

with the options of :class:`~asyncwsgi.AsyncMiddleware` in settings::

    ASYNCWSGI = {"paths": ["/reports/*"], "store": "sqlite:///tasks.db"}

(Python values, checked like the keyword arguments; a key that names no
option is an error.)

A view reads its task as ``request.environ.get("asyncwsgi.task")``.

Tasks run on the middleware's worker threads, which outlive the request;
the database connections a task opened there are closed once its response
is consumed, whatever ``CONN_MAX_AGE`` says, so idle workers hold none.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..middleware import AsyncMiddleware
from ..options import option

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["get_wsgi_application"]


def get_wsgi_application(settings: Any = None, **options: Any) -> AsyncMiddleware:
    """Django's WSGI application inside ``AsyncMiddleware``, with the options
    of ``settings.ASYNCWSGI`` updated by ``options``. ``settings`` defaults to
    ``django.conf.settings``."""
    from django.core.wsgi import get_wsgi_application as django_application

    if settings is None:
        from django.conf import settings as django_settings

        settings = django_settings
    merged = dict(getattr(settings, "ASYNCWSGI", None) or {})
    for name in merged:
        option(name, "settings.ASYNCWSGI")
    merged.update(options)
    inner = django_application()  # runs django.setup()
    return AsyncMiddleware(ClosingConnections(inner), **merged)


class ClosingConnections:
    """Closes the calling thread's database connections after a task's
    response; other requests pass straight through."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if "asyncwsgi.task" not in environ:
            return self.app(environ, start_response)
        try:
            response = self.app(environ, start_response)
        except BaseException:
            _close_connections()
            raise
        return _Closing(response)


class _Closing:
    def __init__(self, response: Iterable[bytes]) -> None:
        self.response = response

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.response)

    def close(self) -> None:
        try:
            close = getattr(self.response, "close", None)
            if close is not None:
                close()
        finally:
            _close_connections()


def _close_connections() -> None:
    from django.db import connections

    connections.close_all()
