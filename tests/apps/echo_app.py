"""A Flask app whose marked view answers what it read of the request, for
tests/test_request_fidelity.py.

``POST /echo`` runs as a task on the middleware's thread pool and answers the
length and SHA-256 of the body it read, with the ``CONTENT_LENGTH`` it saw.
Each task run appends a line to the file named by ``ASYNCWSGI_TEST_RUNS``, so
a test can tell that no task ran.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from flask import Flask, request

from asyncwsgi.contrib.flask import AsyncWSGI

RUNS = os.environ.get("ASYNCWSGI_TEST_RUNS", os.devnull)

app = Flask(__name__)
aw = AsyncWSGI(app, status_path="/_status/", max_workers=2)


@app.post("/echo")
@aw.background
def echo() -> dict[str, Any]:
    with open(RUNS, "a") as runs:
        runs.write(f"{os.getpid()}\n")
    data = request.get_data()
    return {
        "length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "content_length": request.environ.get("CONTENT_LENGTH"),
    }


application = app
