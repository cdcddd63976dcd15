"""Flask with its slow view run on RQ workers: the web processes answer 202
and the status URLs, ``rq worker`` runs the reports. Redis holds both the
RQ queue (database 0) and the task store (database 1).

Run it (Redis at ``$REDIS_URL``, ``redis://127.0.0.1:6379`` by default; the
worker class imports the app once, before each job's fork):

    $ export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
    $ python -m rq.cli worker -w asyncwsgi.executors.rq.Worker --url "$REDIS_URL/0" reports
    $ python -m gunicorn -w 2 -b 127.0.0.1:8000 examples.flask_rq:app

Try it:    curl -i -X POST http://127.0.0.1:8000/reports/q3
           curl -i http://127.0.0.1:8000/status/<id>    (202 with progress, then the report)
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, jsonify, request
from redis import Redis
from rq import Queue

from asyncwsgi.contrib.flask import AsyncWSGI
from asyncwsgi.executors.rq import RQExecutor

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
STEP_SECONDS = float(os.environ.get("STEP_SECONDS", "1"))

app = Flask(__name__)
aw = AsyncWSGI(
    app,
    store=f"{REDIS_URL}/1",
    # The worker imports this module and calls the Flask app (a task's
    # request goes straight through the middleware to the view).
    executor=RQExecutor(
        Queue("reports", connection=Redis.from_url(f"{REDIS_URL}/0")), "examples.flask_rq:app"
    ),
)


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
    return jsonify(report=name, rows=42, pid=os.getpid())
