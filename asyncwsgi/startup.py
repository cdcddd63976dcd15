"""What the middleware checks and says once, when it is built: that the app
is a WSGI app, which patterns turn requests into tasks (a warning when none
can), and whether a store opened from a URL answers. Mistakes a new user
makes in the first hour are caught here, with what to write instead, rather
than as a 500 on every request or silence until the first one."""

from __future__ import annotations

import inspect
import logging
import re
import types
import warnings
from collections.abc import Iterable
from typing import Any

from .patterns import Pattern, pattern_label
from .stores.base import Store, StoreUnavailable

__all__ = ["announce_patterns", "check_app", "probe_store"]

logger = logging.getLogger("asyncwsgi")

# A task id that no store holds (ids are random, 32 URL-safe characters):
# reading it is one round trip that changes nothing.
_PROBE_ID = "0" * 32


def check_app(app: Any) -> None:
    """A WSGI app is a callable that takes ``(environ, start_response)``;
    anything else is a TypeError that says what was given and what to pass."""
    if isinstance(app, str):
        module, _, attribute = app.partition(":")
        hint = f"from {module} import {attribute}" if attribute else f"import {module}"
        raise TypeError(
            f"AsyncMiddleware needs a WSGI app, a callable taking (environ, start_response), "
            f"not the string {app!r}: import it first ({hint}), or serve it by that name "
            f"with `asyncwsgi serve {app} --path ...`"
        )
    if isinstance(app, types.ModuleType):
        raise TypeError(
            f"AsyncMiddleware needs a WSGI app, not the module {app.__name__!r}: pass the "
            f"app it holds (such as {app.__name__}.app or {app.__name__}.application)"
        )
    if not callable(app):
        raise TypeError(
            "AsyncMiddleware needs a WSGI app, a callable taking (environ, start_response), "
            f"not {type(app).__name__} {app!r}"
        )
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):
        return  # a callable whose signature Python cannot tell (C code): trust it
    try:
        signature.bind({}, None)
    except TypeError:
        pass
    else:
        return
    name = getattr(app, "__qualname__", None) or type(app).__name__
    parameters = list(signature.parameters)
    if parameters[:1] == ["global_config"]:
        advice = (
            "it is a PasteDeploy app factory: call it (app = "
            f"{name}(global_config, **settings)) or run it with pserve and the "
            "asyncwsgi filter"
        )
    elif not parameters:
        advice = f"it takes no arguments, as an app factory does: pass {name}()"
    else:
        advice = "pass the app itself, or call the factory that makes it"
    raise TypeError(
        f"AsyncMiddleware needs a WSGI app, a callable taking (environ, start_response); "
        f"{name}({_parameters(signature)}) does not take them: {advice}"
    )


def _parameters(signature: inspect.Signature) -> str:
    """The parameters by name only (``global_config, **settings``): what a
    message needs, without annotations that may be strings."""
    return ", ".join(map(_named, signature.parameters.values()))


def _named(parameter: inspect.Parameter) -> str:
    if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
        return "*" + parameter.name
    if parameter.kind is inspect.Parameter.VAR_KEYWORD:
        return "**" + parameter.name
    return parameter.name


def announce_patterns(
    paths: Iterable[Pattern], prefer_paths: Iterable[Pattern], methods: Iterable[str]
) -> None:
    """One log line with the patterns in force (each said as the matcher reads
    it), and a warning, logged and through :mod:`warnings`, when there is
    none: then every request runs as if the middleware were not there."""
    paths, prefer_paths = list(paths), list(prefer_paths)
    if not paths and not prefer_paths:
        message = (
            "asyncwsgi: no paths and no prefer_paths: no request will become a task "
            "(give paths=['/reports/*'], for instance)"
        )
        logger.warning(message)
        # Pointed at the line that built the middleware (through _make_answers
        # and __init__).
        warnings.warn(message, UserWarning, stacklevel=4)
        return
    said = [f"paths {_said(paths)}"] if paths else []
    if prefer_paths:
        said.append(f"prefer_paths {_said(prefer_paths)} (with Prefer: respond-async)")
    logger.info("asyncwsgi: tasks for %s on %s", " ".join(sorted(methods)), "; ".join(said))


def _said(patterns: list[Pattern]) -> str:
    return ", ".join(_one(pattern) for pattern in patterns)


def _one(pattern: Pattern) -> str:
    label = pattern_label(pattern)
    if isinstance(pattern, re.Pattern):
        return f"{label!r} (regex)"
    if not isinstance(pattern, str) or "<" in pattern:
        return f"{label!r} (rule)"
    if "*" in pattern:
        return f"{label!r} (* matches anything)"
    return f"{label!r} (this path only)"


def probe_store(store: Store) -> None:
    """One read of a store opened from a URL: if it cannot be reached now, one
    warning line says so (requests get 503 with Retry-After until it can),
    rather than silence until the first request."""
    try:
        store.get(_PROBE_ID)
    except StoreUnavailable as exc:
        logger.warning(
            "asyncwsgi: the task store cannot be reached (%s); submissions and polls get "
            "503 with Retry-After until it can",
            exc,
        )
