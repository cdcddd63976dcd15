"""An app for the adversarial tests under real servers (waitress, gunicorn).

Configured from the environment: ``ASYNCWSGI_TEST_STORE`` (store URL, memory
when unset), ``ASYNCWSGI_TEST_CALLBACK_ALLOW`` (space-separated prefixes) and
``ASYNCWSGI_TEST_CALLBACK_SECRET``, the sender's ``ASYNCWSGI_TEST_CLAIM_LEASE``
and ``ASYNCWSGI_TEST_ATTEMPT_TIMEOUT`` (seconds). The task list is on.

``ASYNCWSGI_TEST_MAX_RESULT`` sets ``max_result``.

``/work/hundred`` answers 100 bytes with no validator (the middleware adds
its strong ETag); ``/work/weak`` the same 100 bytes with the app's own weak
ETag ``W/"v1"``; ``/work/sized?n=N`` N bytes with only ``Content-Length``;
anything else under ``/work/`` answers ``made``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from asyncwsgi import AsyncMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

HUNDRED = bytes(range(100))


def inner(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    headers = [("Content-Type", "application/octet-stream")]
    if path == "/work/hundred":
        body = HUNDRED
    elif path == "/work/sized":
        start_response("200 OK", [("Content-Length", environ["QUERY_STRING"][2:])])
        return [b"x" * int(environ["QUERY_STRING"][2:])]
    elif path == "/work/weak":
        body = HUNDRED
        headers.append(("ETag", 'W/"v1"'))
    else:
        body = b"made"
    headers.append(("Content-Length", str(len(body))))
    start_response("200 OK", headers)
    return [body]


def _options() -> dict[str, Any]:
    options: dict[str, Any] = {"paths": ["/work/*"], "list_tasks": True}
    store = os.environ.get("ASYNCWSGI_TEST_STORE")
    if store:
        options["store"] = store
    if os.environ.get("ASYNCWSGI_TEST_MAX_RESULT"):
        options["max_result"] = int(os.environ["ASYNCWSGI_TEST_MAX_RESULT"])
    allow = os.environ.get("ASYNCWSGI_TEST_CALLBACK_ALLOW")
    if allow:
        options["callback_allow"] = allow.split()
        options["callback_secret"] = os.environ["ASYNCWSGI_TEST_CALLBACK_SECRET"]
    return options


application = AsyncMiddleware(inner, **_options())
# The callback sender's timing, shortened by the tests that wait on it.
if application.callbacks is not None:
    if os.environ.get("ASYNCWSGI_TEST_CLAIM_LEASE"):
        application.callbacks.claim_lease = float(os.environ["ASYNCWSGI_TEST_CLAIM_LEASE"])
    if os.environ.get("ASYNCWSGI_TEST_ATTEMPT_TIMEOUT"):
        timeout = float(os.environ["ASYNCWSGI_TEST_ATTEMPT_TIMEOUT"])
        application.callbacks.attempt_timeout = timeout
