"""PasteDeploy filter (Pyramid's ``pserve``, any ``paste.deploy.loadapp``).

.. code-block:: ini

    [pipeline:main]
    pipeline = asyncwsgi myapp

    [filter:asyncwsgi]
    use = egg:asyncwsgi
    paths =
        /reports/*
        /export/<int:id>
    store = sqlite:///tasks.db
    max_workers = 4

Every option of :class:`~asyncwsgi.AsyncMiddleware` is accepted as a string
and converted here: ``paths``, ``prefer_paths`` and ``methods`` are lists,
one per line or separated by spaces; numbers are numbers; ``owner`` and
``executor`` name an object as ``package.module:attribute`` (``executor`` is
called with no arguments to make one).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..middleware import AsyncMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["filter_app_factory", "convert_options"]


def _list(value: str) -> list[str]:
    return value.split()


def _object(value: str) -> Any:
    module, _, attribute = value.strip().partition(":")
    if not attribute:
        raise ValueError(f"{value!r} must be given as package.module:attribute")
    target: Any = importlib.import_module(module)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def _make(value: str) -> Any:
    return _object(value)()


def _str(value: str) -> str:
    return value.strip()


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "paths": _list,
    "prefer_paths": _list,
    "methods": _list,
    "status_path": _str,
    "store": _str,
    "max_workers": int,
    "max_pending": int,
    "result_ttl": float,
    "max_body": int,
    "max_result": int,
    "retry_after": int,
    "max_retry_after": int,
    "max_wait": float,
    "owner": _object,
    "lease": float,
    "executor": _make,
}


def convert_options(conf: dict[str, str]) -> dict[str, Any]:
    """AsyncMiddleware's keyword arguments from an ini section's strings."""
    options: dict[str, Any] = {}
    for name, value in conf.items():
        converter = _CONVERTERS.get(name)
        if converter is None:
            raise ValueError(f"unknown asyncwsgi option {name!r}")
        try:
            options[name] = converter(value)
        except (ValueError, ImportError, AttributeError) as exc:
            raise ValueError(f"asyncwsgi option {name} = {value!r}: {exc}") from exc
    return options


def filter_app_factory(
    app: WSGIApplication, global_conf: dict[str, str], **local_conf: str
) -> AsyncMiddleware:
    """The ``paste.filter_app_factory`` entry point ``egg:asyncwsgi``."""
    return AsyncMiddleware(app, **convert_options(local_conf))
