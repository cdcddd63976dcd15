"""Bottle: the app wrapped in plain ``AsyncMiddleware``.

Run it:    python -m examples.bottle_app
Try it:    curl -i -X POST http://127.0.0.1:8000/reports/q3
           curl -i http://127.0.0.1:8000/status/<id>
"""

from __future__ import annotations

import os
import time
from typing import Any

import bottle

from asyncwsgi import AsyncMiddleware

STEP_SECONDS = 1.0

web = bottle.Bottle()


def report(name: str) -> Any:
    task = bottle.request.environ.get("asyncwsgi.task")
    steps = 5
    for step in range(steps):
        if task is not None:
            if task.cancelled:
                break
            task.set_progress(step, steps, f"rendering part {step + 1} of {steps}")
        time.sleep(STEP_SECONDS)
    return {"report": name, "rows": 42}


def about(name: str) -> str:
    return f"POST to /reports/{name} to render it in the background\n"


# Routes added by call rather than by decorator: bottle's decorators are untyped.
web.route("/reports/<name>", "POST", report)
web.route("/reports/<name>", "GET", about)
app = AsyncMiddleware(web, paths=["/reports/*"], methods=["POST"])

if __name__ == "__main__":
    bottle.run(app, server="waitress", host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
