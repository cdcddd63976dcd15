"""Falcon: the app wrapped in plain ``AsyncMiddleware``.

Run it:    python -m gunicorn --bind 127.0.0.1:8000 examples.falcon_app:app
Try it:    curl -i -X POST http://127.0.0.1:8000/reports/q3
           curl -i http://127.0.0.1:8000/status/<id>
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

import falcon

from asyncwsgi import AsyncMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

STEP_SECONDS = 1.0


class Report:
    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        task = req.env.get("asyncwsgi.task")
        steps = 5
        for step in range(steps):
            if task is not None:
                if task.cancelled:
                    break
                task.set_progress(step, steps, f"rendering part {step + 1} of {steps}")
            time.sleep(STEP_SECONDS)
        resp.media = {"report": name, "rows": 42}

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        resp.text = f"POST to /reports/{name} to render it in the background\n"


api = falcon.App()
api.add_route("/reports/{name}", Report())
# falcon types start_response without its optional exc_info argument, which
# the middleware may pass (PEP 3333): the app is a WSGI application all the same.
app = AsyncMiddleware(cast("WSGIApplication", api), paths=["/reports/*"], methods=["POST"])
