"""A WSGI app that answers which process imported it and which runs it."""

from __future__ import annotations

import os
from typing import Any

IMPORTED_BY = os.getpid()


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = f"{IMPORTED_BY} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
