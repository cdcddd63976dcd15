"""Flask: a view marked ``@aw.background`` runs as a task with a status URL.

Run it:    python -m examples.flask_app
Try it:    curl -i -X POST http://127.0.0.1:8000/reports/q3
           curl -i http://127.0.0.1:8000/status/<id>    (202 with progress, then the report)
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, jsonify, request

from asyncwsgi.contrib.flask import AsyncWSGI

STEP_SECONDS = 1.0

app = Flask(__name__)
app.config["ASYNCWSGI_MAX_WORKERS"] = 4
aw = AsyncWSGI(app)


@app.post("/reports/<name>")
@aw.background
def report(name: str) -> Any:
    task = request.environ.get("asyncwsgi.task")
    steps = 5
    for step in range(steps):
        if task is not None:
            if task.cancelled:
                break
            task.set_progress(step, steps, f"rendering part {step + 1} of {steps}")
        time.sleep(STEP_SECONDS)
    return jsonify(report=name, rows=42)


@app.get("/reports/<name>")
def about(name: str) -> Any:
    return f"POST to /reports/{name} to render it in the background\n"


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
