"""httpbin behind asyncwsgi with its tasks run by a Celery worker, for
tests/test_celery_fidelity.py.

Web side: ``python -m gunicorn tests.apps.celery_httpbin:application``
(``tests.apps.celery_httpbin:direct`` serves httpbin without asyncwsgi;
``mounted`` and ``direct_mounted`` serve them under ``/my app``).
Worker side: ``python -m celery -A tests.apps.celery_httpbin:celery_app worker``.
Both read the broker and store URLs from ``ASYNCWSGI_TEST_BROKER`` and
``ASYNCWSGI_TEST_STORE``.
"""

from __future__ import annotations

import os

import httpbin
from celery import Celery
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.wrappers import Request, Response

from asyncwsgi import AsyncMiddleware
from asyncwsgi.executors.celery import CeleryExecutor

celery_app = Celery("celery_httpbin", broker=os.environ.get("ASYNCWSGI_TEST_BROKER"))
celery_app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)


@Request.application
def _echo(request: Request) -> Response:
    # What werkzeug (so Flask) reads of the body: httpbin itself would not
    # do, as it marks chunked requests from gunicorn as terminated on its own.
    return Response(request.get_data(), content_type="application/octet-stream")


site = DispatcherMiddleware(httpbin.app, {"/werkzeug-echo": _echo})
direct = site

application = AsyncMiddleware(
    site,
    paths=["/*"],
    methods=("GET", "POST", "PUT", "PATCH", "DELETE"),
    status_path="/_async/",
    store=os.environ.get("ASYNCWSGI_TEST_STORE"),
    executor=CeleryExecutor(celery_app, "tests.apps.celery_httpbin:application"),
)

# The same two under a mount whose path needs percent-encoding (sent as
# /my%20app): a WSGI mount, as gunicorn compares its SCRIPT_NAME setting with
# the raw, still encoded path.
MOUNT = "/my app"
direct_mounted = DispatcherMiddleware(NotFound(), {MOUNT: site})
mounted = DispatcherMiddleware(NotFound(), {MOUNT: application})
