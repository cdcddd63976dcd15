"""An app whose ``/work/hang`` never returns (for shutdown tests); any other
path answers ``ok`` at once."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

_never = threading.Event()


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/work/hang":
        _never.wait()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
