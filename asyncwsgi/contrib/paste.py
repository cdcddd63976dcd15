"""PasteDeploy filter (Pyramid's ``pserve``, any ``paste.deploy.loadapp``).

.. code-block:: ini

    [pipeline:main]
    pipeline = asyncwsgi myapp

    [filter:asyncwsgi]
    use = egg:asyncwsgi-middleware
    paths =
        /reports/*
        /export/<int:id>
    store = sqlite:///tasks.db
    max_workers = 4

Every option of :class:`~asyncwsgi.AsyncMiddleware` is accepted as a string
and converted by its converter in :mod:`asyncwsgi.options`: ``paths``,
``prefer_paths`` and ``methods`` are lists, one per line or separated by
spaces; numbers are numbers; ``owner`` and ``executor`` name an object as
``package.module:attribute`` (``executor`` is called with no arguments to
make one). An unknown key is an error naming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..middleware import AsyncMiddleware
from ..options import convert_options

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["convert_options", "filter_app_factory"]


def filter_app_factory(
    app: WSGIApplication, global_conf: dict[str, str], **local_conf: str
) -> AsyncMiddleware:
    """The ``paste.filter_app_factory`` entry point ``egg:asyncwsgi-middleware``."""
    return AsyncMiddleware(app, **convert_options(local_conf, "the [filter] section"))
