"""What of a request crosses over to the task that runs it.

The server's connection is gone by the time a task runs, so a task gets a
copy of the environ, not the environ:

- every ``str`` value, unchanged (CGI variables, ``HTTP_*`` headers,
  ``wsgi.url_scheme``, anything an outer middleware put there as a string);
- ``wsgi.version`` and ``wsgi.multiprocess`` as the server set them,
  ``wsgi.multithread = True`` and ``wsgi.run_once = False`` (tasks run on a
  pool of threads that lives on);
- ``wsgi.input``: a new stream over the body that was read in full before the
  202 (from memory, or from the store where it was spooled when larger than
  ``spool_threshold``), with ``wsgi.input_terminated`` set (the stream ends
  where the body does); see :func:`task_environ` for ``CONTENT_LENGTH`` and
  chunked bodies;
- ``wsgi.errors``: the process's standard error, which outlives the request;
- other non-string values from outer middleware, by reference (the same
  objects), except the server's objects tied to the connection, which are
  dropped: ``wsgi.file_wrapper``, sockets, and keys of the servers' own
  namespaces (``gunicorn.*``, ``waitress.*``, ``uwsgi.*``, ``werkzeug.socket``,
  ``werkzeug.server.*``, ``eventlet.*``, ``gevent.*``);
- ``asyncwsgi.task``, the task's handle, added by the runner.
- with tracing set up, ``HTTP_TRACEPARENT``/``HTTP_TRACESTATE`` of the task's
  run span in place of the request's (see :mod:`asyncwsgi.tracing`).
"""

from __future__ import annotations

import io
import socket
import sys
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import BadRequest, LengthRequired, RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from .capture import Spool
from .task import Body

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


_BLOCK = 256 * 1024


def read_body(environ: WSGIEnvironment, max_body: int, spool: Spool | None = None) -> bytes | Body:
    """The whole request body, read before the client is answered: into
    ``spool`` (memory up to its threshold, then the store) when given, else
    into memory.

    Raises werkzeug's HTTP exceptions, which are WSGI responses themselves:
    413 past ``max_body``, 400 for a ``Content-Length`` that is not a
    number or a body shorter than announced (a client that went away half
    way: gunicorn then hands over a terminated stream that simply ends, and
    the app must never run on half a request), 411 for a chunked body the
    server does not terminate (it could not be read safely, and dropping it
    would lose the request).
    """
    length = environ.get("CONTENT_LENGTH")
    if (
        not length
        and "HTTP_TRANSFER_ENCODING" not in environ
        and environ.get("SERVER_PROTOCOL", "").startswith("HTTP/1.")
    ):
        # Neither a length nor a transfer coding: an HTTP/1.x request has no
        # body (RFC 9112, 6.3), whatever the stream (most GETs end here).
        return b""
    announced: int | None = None
    if length:
        if not length.isascii() or not length.strip().isdigit():
            raise BadRequest("Content-Length is not a non-negative integer")
        announced = int(length)
        if not announced and "HTTP_TRANSFER_ENCODING" not in environ:
            # Nothing to read (a POST without a body): no stream to set up.
            return b"" if spool is None else spool.result()
    elif not environ.get("wsgi.input_terminated"):
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            raise LengthRequired()
        # No length and no terminated stream: PEP 3333 says there is no body.
        return b""
    stream = get_input_stream(environ, max_content_length=max_body)
    # One byte past the limit tells "too large" without reading an unbounded
    # chunked body into memory.
    limit = max_body + 1 if announced is None else announced
    if spool is None:
        body = _read(stream, limit)
        size = len(body)
    else:
        size = 0
        while size < limit:
            block = stream.read(min(limit - size, _BLOCK))
            if not block:
                break
            size += len(block)
            if size > max_body:
                break
            spool.write(block)
    if size > max_body:
        raise RequestEntityTooLarge()
    if announced is not None and size < announced:
        raise BadRequest(f"the body ended after {size} of {announced} bytes")
    return body if spool is None else spool.result()


def _read(stream: Any, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at the end of the stream: one read()
    may return less (werkzeug's LimitedStream reads once per call)."""
    chunks: list[bytes] = []
    got = 0
    while got < size:
        chunk = stream.read(min(size - got, 2**20))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def snapshot(environ: WSGIEnvironment) -> dict[str, Any]:
    """The environ without the connection: what :func:`task_environ` builds on."""
    # A copy made in C, then the few keys that go: most values are strings.
    copied = dict(environ)
    for key in copied.keys() & _DROPPED:
        if type(copied[key]) is not str:
            del copied[key]
    for key in [
        key
        for key, value in copied.items()
        if type(value) is not str
        and (key.startswith(_DROPPED_PREFIXES) or isinstance(value, socket.socket))
    ]:
        del copied[key]
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


def task_environ(base: dict[str, Any], body: bytes | Body) -> dict[str, Any]:
    """The environ a task's app call gets, from a :func:`snapshot` (or the
    string values of one, sent to another process) and the body.

    The one rule for the body, whatever runs the task (thread pool, Celery,
    any executor): the body was read in full before the 202, so the task
    reads it as a buffering proxy would pass it on: ``CONTENT_LENGTH`` is its
    length (also for a chunked request, which had none: frameworks such as
    Django read ``CONTENT_LENGTH`` only), ``wsgi.input_terminated`` is set,
    and ``Transfer-Encoding`` is gone, as the stream is no longer chunked. A
    request without a body keeps whatever ``CONTENT_LENGTH`` it had (none, or
    ``0``).
    """
    environ = dict(base)
    environ.setdefault("wsgi.version", (1, 0))
    environ.setdefault("wsgi.url_scheme", "http")
    environ.setdefault("wsgi.multiprocess", False)
    environ["wsgi.multithread"] = True
    environ["wsgi.run_once"] = False
    if isinstance(body, bytes):
        environ["wsgi.input"] = io.BytesIO(body)
        size = len(body)
    else:
        environ["wsgi.input"] = body.open()
        size = body.size
    environ["wsgi.input_terminated"] = True
    environ["wsgi.errors"] = sys.stderr
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    if size or environ.get("CONTENT_LENGTH"):
        environ["CONTENT_LENGTH"] = str(size)
    return environ
