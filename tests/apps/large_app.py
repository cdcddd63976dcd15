"""An app of large responses and uploads behind AsyncMiddleware, for real servers.

Configured from the environment: ``ASYNCWSGI_TEST_STORE`` (a store URL, or
``memory:``), ``ASYNCWSGI_TEST_MAX_BODY``, ``ASYNCWSGI_TEST_MAX_STORED_BYTES``,
``ASYNCWSGI_TEST_RESULTS_DIR``, ``ASYNCWSGI_TEST_RESULT_TTL``,
``ASYNCWSGI_TEST_SPOOL_THRESHOLD``, ``ASYNCWSGI_TEST_MAX_RESULT`` (2 GiB by
default, and a budget of 4 GiB unless one is given: room for a 1 GiB upload
and the worst case of its result).

``/work/big?size=N`` streams :func:`stream` (N bytes in 64 KiB chunks, each
one different); ``/work/upload`` answers ``<sha256 hex> <length>`` of the
request body it read 64 KiB at a time; ``/static/big?size=N`` serves the same
bytes as ``/work/big`` directly (not a task), through the server's
``wsgi.file_wrapper`` from a file made once, for comparison;
``/static/big?size=N&read=1`` serves that file read into Python 1 MiB at a
time instead (what any body that passes through the process costs at best).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from asyncwsgi import AsyncMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

CHUNK = 64 * 1024
_BASE = hashlib.sha256(b"asyncwsgi").digest() * (CHUNK // 32)


def stream(size: int) -> Iterator[bytes]:
    """``size`` bytes in 64 KiB chunks, each starting with its index (so a
    chunk sent twice or out of order changes the digest)."""
    for index, start in enumerate(range(0, size, CHUNK)):
        chunk = struct.pack(">Q", index) + _BASE[8:]
        yield chunk[: min(CHUNK, size - start)]


def digest(size: int, start: int = 0) -> str:
    """The SHA-256 of ``stream(size)`` from byte ``start`` on."""
    sha = hashlib.sha256()
    position = 0
    for chunk in stream(size):
        end = position + len(chunk)
        if end > start:
            sha.update(chunk[max(0, start - position) :])
        position = end
    return sha.hexdigest()


def _static_file(size: int) -> str:
    path = os.path.join(tempfile.gettempdir(), f"asyncwsgi-static-{size}-{os.getuid()}.bin")
    if not os.path.exists(path) or os.path.getsize(path) != size:
        part = f"{path}.{os.getpid()}"
        with open(part, "wb") as file:
            for chunk in stream(size):
                file.write(chunk)
        os.replace(part, path)
    return path


def inner(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/work/upload":
        sha = hashlib.sha256()
        length = 0
        body = environ["wsgi.input"]
        while block := body.read(CHUNK):
            sha.update(block)
            length += len(block)
        out = f"{sha.hexdigest()} {length}".encode()
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))]
        )
        return [out]
    size = int(query.get("size", ["0"])[0])
    headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
    if path == "/static/big":
        file = open(_static_file(size), "rb")  # noqa: SIM115 (the server closes it)
        start_response("200 OK", headers)
        wrapper = environ.get("wsgi.file_wrapper")
        if query.get("read") == ["1"]:
            return iter(lambda: file.read(2**20), b"")
        if wrapper is not None:
            wrapped: Iterable[bytes] = wrapper(file, 256 * 1024)
            return wrapped
        return iter(lambda: file.read(256 * 1024), b"")
    start_response("200 OK", headers)
    return stream(size)


def _optional_int(name: str) -> int | None:
    value = os.environ.get(name)
    return None if not value else int(value)


application = AsyncMiddleware(
    inner,
    paths=["/work/*"],
    store=os.environ.get("ASYNCWSGI_TEST_STORE", "memory:"),
    max_body=_optional_int("ASYNCWSGI_TEST_MAX_BODY") or 10 * 2**20,
    max_result=_optional_int("ASYNCWSGI_TEST_MAX_RESULT") or 2**31,
    max_stored_bytes=_optional_int("ASYNCWSGI_TEST_MAX_STORED_BYTES") or 4 * 2**30,
    results_dir=os.environ.get("ASYNCWSGI_TEST_RESULTS_DIR") or None,
    result_ttl=float(os.environ.get("ASYNCWSGI_TEST_RESULT_TTL", "300")),
    spool_threshold=_optional_int("ASYNCWSGI_TEST_SPOOL_THRESHOLD") or 2**20,
)
