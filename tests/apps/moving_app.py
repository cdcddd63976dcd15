"""A task that moves at a steady pace, for the live-progress tests.

``POST /moves/<n>`` reports progress ``n`` times, 0.8 s apart; each
progress message is the wall-clock time it was set, so that a client in
another process can tell how late it saw it. ``application`` is it wrapped
(in-process store: run it with one worker); ``no_streams`` puts in front of
it a proxy that drops ``Accept``, so that the status URL never streams.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from asyncwsgi import AsyncMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

PACE = 0.8


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    steps = int(environ["PATH_INFO"].rsplit("/", 1)[1])
    task = environ.get("asyncwsgi.task")
    for step in range(steps):
        if task is not None:
            task.set_progress(step + 1, steps, repr(time.time()))
        time.sleep(PACE)
    body = b"moved %d times\n" % steps
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


application = AsyncMiddleware(app, paths=["/moves/*"])


def no_streams(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    environ.pop("HTTP_ACCEPT", None)
    return application(environ, start_response)


def create_app() -> WSGIApplication:
    """An app factory, served as ``tests.apps.moving_app:create_app()``."""
    return app
