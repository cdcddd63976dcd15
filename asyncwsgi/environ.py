"""What of a request crosses over to the task that runs it.

The server's connection is gone by the time a task runs, so a task gets a
copy of the environ, not the environ:

- every ``str`` value, unchanged (CGI variables, ``HTTP_*`` headers,
  ``wsgi.url_scheme``, anything an outer middleware put there as a string);
- ``wsgi.version`` and ``wsgi.multiprocess`` as the server set them,
  ``wsgi.multithread = True`` and ``wsgi.run_once = False`` (tasks run on a
  pool of threads that lives on);
- ``wsgi.input``: a new stream over the body that was read in full before the
  202, and ``CONTENT_LENGTH`` set to its length, or left out when the request
  had none;
- ``wsgi.errors``: the process's standard error, which outlives the request;
- other non-string values from outer middleware, by reference (the same
  objects), except the server's objects tied to the connection, which are
  dropped: ``wsgi.file_wrapper``, sockets, and keys of the servers' own
  namespaces (``gunicorn.*``, ``waitress.*``, ``uwsgi.*``, ``werkzeug.socket``,
  ``werkzeug.server.*``, ``eventlet.*``, ``gevent.*``);
- ``asyncwsgi.task``, the task's handle, added by the runner.
"""

from __future__ import annotations

import io
import socket
import sys
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import BadRequest, LengthRequired, RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["json_environ", "read_body", "snapshot", "task_environ"]

_DROPPED = frozenset(
    {"wsgi.input", "wsgi.errors", "wsgi.file_wrapper", "werkzeug.socket", "asyncwsgi.task"}
)
_DROPPED_PREFIXES = (
    "gunicorn.",
    "waitress.",
    "uwsgi.",
    "werkzeug.server.",
    "eventlet.",
    "gevent.",
)


def read_body(environ: WSGIEnvironment, max_body: int) -> bytes:
    """The whole request body, read before the client is answered.

    Raises werkzeug's HTTP exceptions, which are WSGI responses themselves:
    413 past ``max_body``, 400 for a ``Content-Length`` that is not a
    number or a body shorter than announced, 411 for a chunked body the
    server does not terminate (it could not be read safely, and dropping it
    would lose the request).
    """
    length = environ.get("CONTENT_LENGTH")
    if length:
        if not length.isascii() or not length.strip().isdigit():
            raise BadRequest("Content-Length is not a non-negative integer")
    elif not environ.get("wsgi.input_terminated"):
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            raise LengthRequired()
        # No length and no terminated stream: PEP 3333 says there is no body.
        return b""
    stream = get_input_stream(environ, max_content_length=max_body)
    body = stream.read()
    if len(body) > max_body:
        raise RequestEntityTooLarge()
    return body


def snapshot(environ: WSGIEnvironment) -> dict[str, Any]:
    """The environ without the connection: what :func:`task_environ` builds on."""
    copied: dict[str, Any] = {}
    for key, value in environ.items():
        if type(value) is str:
            copied[key] = value
        elif (
            key in _DROPPED or key.startswith(_DROPPED_PREFIXES) or isinstance(value, socket.socket)
        ):
            continue
        else:
            copied[key] = value
    return copied


def json_environ(environ: dict[str, Any]) -> dict[str, Any]:
    """The part of a :func:`snapshot` that crosses to a worker in another
    process (a JSON message on Celery, RQ or Django Tasks): its ``str``
    values and ``wsgi.multiprocess``. Objects an outer middleware put in the
    environ stay behind."""
    sent: dict[str, Any] = {
        key: value for key, value in environ.items() if type(value) is str and type(key) is str
    }
    multiprocess = environ.get("wsgi.multiprocess")
    if isinstance(multiprocess, bool):
        sent["wsgi.multiprocess"] = multiprocess
    return sent


def task_environ(base: dict[str, Any], body: bytes) -> dict[str, Any]:
    """The environ a task's app call gets, from a :func:`snapshot` (or the
    string values of one, sent to another process) and the body."""
    environ = dict(base)
    environ.setdefault("wsgi.version", (1, 0))
    environ.setdefault("wsgi.url_scheme", "http")
    environ.setdefault("wsgi.multiprocess", False)
    environ["wsgi.multithread"] = True
    environ["wsgi.run_once"] = False
    environ["wsgi.input"] = io.BytesIO(body)
    environ["wsgi.errors"] = sys.stderr
    if environ.get("CONTENT_LENGTH"):
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ
