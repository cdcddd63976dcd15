"""One attempt to deliver a callback: an HTTP/1.1 ``POST`` whose every step
(connecting, TLS, sending, reading the status line) ends by one deadline,
however slowly the receiver answers."""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ATTEMPT_FAULTS", "post"]

# What an attempt can fail of: the network (OSError: refused, reset, timed
# out, TLS, name resolution) or a receiver that does not speak HTTP
# (ValueError). Anything else is a bug, logged with its traceback.
ATTEMPT_FAULTS = (OSError, ValueError)
_STATUS_LINE = re.compile(rb"HTTP/[0-9]\.[0-9] ([0-9]{3})(?: [^\r\n]*)?\r?")
# The status line and interim responses must come within this many bytes.
_MAX_HEAD = 65536


def post(
    url: str,
    message: bytes,
    *,
    connect_timeout: float,
    read_timeout: float,
    attempt_timeout: float,
    tls: Callable[[], ssl.SSLContext],
) -> int:
    """Send ``message`` to ``url``: the receiver's status code (a redirect is
    not followed). Everything, connecting to reading the status line, ends
    within ``attempt_timeout``; raises OSError (TimeoutError past it) or
    ValueError (an answer that is not HTTP)."""
    started = time.monotonic()
    deadline = started + attempt_timeout
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    sock = _connect(host, port, min(deadline, started + connect_timeout))
    try:
        if parts.scheme == "https":
            context = tls()
            sock.settimeout(_left(deadline))
            sock = context.wrap_socket(sock, server_hostname=host)
        sock.settimeout(_left(deadline))
        sock.sendall(message)
        return _read_status(sock, min(deadline, time.monotonic() + read_timeout))
    finally:
        sock.close()


def _left(deadline: float) -> float:
    """Seconds until ``deadline``; TimeoutError once it has passed (a socket
    timeout of 0 would mean "do not block", not "no time left")."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the attempt's deadline passed")
    return left


def _connect(host: str, port: int, deadline: float) -> socket.socket:
    """A connection to one of ``host``'s addresses, looked up and all tried
    by ``deadline``."""
    error: OSError = TimeoutError("the attempt's deadline passed")
    for family, kind, proto, _, address in _addresses(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_left(deadline))
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


# getaddrinfo cannot be interrupted, and the system resolver's own timeouts
# (5 s a name server, each tried in turn) may outlast the attempt, and with it
# the claim that keeps another process from sending the same delivery. So a
# lookup runs on a thread of its own that the attempt stops waiting for at its
# deadline; the thread ends when the resolver gives up. At most this many run
# at once (a resolver that hangs holds them all): an attempt that finds none
# free by its deadline fails, and is tried again later like any other.
_LOOKUPS = threading.BoundedSemaphore(4)
# What getaddrinfo answers: (family, type, proto, canonname, sockaddr) each.
_Addresses = list[tuple[Any, Any, int, str, tuple[Any, ...]]]


def _addresses(host: str, port: int, deadline: float) -> _Addresses:
    """``socket.getaddrinfo(host, port)`` for a stream socket, by ``deadline``."""
    if not _LOOKUPS.acquire(timeout=_left(deadline)):
        raise TimeoutError(f"no lookup of {host} could start by the attempt's deadline")
    done = threading.Event()
    found: list[Any] = []

    def look_up() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except Exception as exc:  # raised in the attempt's thread instead (gaierror,
            found.append(exc)  # a name IDNA refuses), never ending this one
        finally:
            _LOOKUPS.release()
            done.set()

    try:
        threading.Thread(target=look_up, name="asyncwsgi-lookup", daemon=True).start()
    except BaseException:
        _LOOKUPS.release()  # no thread to give the slot back (none could start)
        raise
    if not done.wait(_left(deadline)):
        raise TimeoutError(f"looking up {host} did not end by the attempt's deadline")
    result = found[0]
    if isinstance(result, Exception):
        raise result
    addresses: _Addresses = result
    return addresses


def _read_status(sock: socket.socket, deadline: float) -> int:
    """The status code of the final response (interim 1xx ones skipped), read
    by ``deadline`` however slowly the bytes come; the rest is not read."""
    data = b""
    while True:
        line, newline, _ = data.partition(b"\n")
        if newline:
            match = _STATUS_LINE.fullmatch(line)
            if match is None:
                raise ValueError("the receiver's answer is not an HTTP/1.x response")
            status = int(match.group(1))
            if status >= 200:
                return status
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                data = data[end + 4 :]
                continue
        if len(data) > _MAX_HEAD:
            raise ValueError("no status line in the receiver's first 64 KiB")
        sock.settimeout(_left(deadline))
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the receiver closed the connection before answering")
        data += chunk
