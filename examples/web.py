"""The demo in a browser: a page at / that runs a report and shows its progress.

Run:  python -m examples.web   (then open http://127.0.0.1:8000/)

``/`` serves examples/static/index.html; everything else goes to
examples.demo_app, with ``/reports/*`` turned into background tasks.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from werkzeug.serving import make_server

from asyncwsgi import AsyncMiddleware
from examples.demo_app import app as demo_app

PAGE = Path(__file__).resolve().parent / "static" / "index.html"


def site(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The page at / (and /index.html); the demo app for everything else."""
    if environ.get("PATH_INFO", "") in ("", "/", "/index.html"):
        body = PAGE.read_bytes()
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-cache"),
            ],
        )
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]
    return demo_app(environ, start_response)


def make_app() -> AsyncMiddleware:
    """A fresh wrapped app (each has its own task store and workers)."""
    return AsyncMiddleware(site, paths=["/reports/*"])


app = make_app()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    port = int(args[0]) if args else 8000
    server = make_server("127.0.0.1", port, app, threaded=True)
    print(f"open http://127.0.0.1:{server.port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.close()


if __name__ == "__main__":
    main()
