"""A Falcon app whose ``POST /reports/{name}`` answers 201 with what it read,
and sets progress when it runs as a task; for tests/test_frameworks.py, in
process and under a waitress process (``application``)."""

from __future__ import annotations

from typing import Any

from asyncwsgi import AsyncMiddleware


def make_falcon() -> Any:
    import falcon

    class Report:
        def on_post(self, req: Any, resp: Any, name: str) -> None:
            task = req.env.get("asyncwsgi.task")
            if task is not None:
                task.set_progress(1, 1, "done")
            resp.media = {"name": name, "body": req.bounded_stream.read().decode()}
            resp.status = falcon.HTTP_201

        def on_get(self, req: Any, resp: Any, name: str) -> None:
            resp.media = {"name": name, "sync": True}

    app = falcon.App()
    app.add_route("/reports/{name}", Report())
    return app


def __getattr__(name: str) -> Any:
    # Made when a server asks for it, so that importing make_falcon starts no
    # thread pool in the test process.
    if name == "application":
        return AsyncMiddleware(make_falcon(), paths=["/reports/*"], methods=["POST"])
    raise AttributeError(name)
