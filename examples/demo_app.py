"""A plain WSGI app with a long task that reports progress.

Run it wrapped:  python -m asyncwsgi serve examples.demo_app:app --path '/reports/*'
"""

from __future__ import annotations

import json
import time
from typing import Any


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ["PATH_INFO"].startswith("/reports/"):
        task = environ.get("asyncwsgi.task")
        steps = 5
        for step in range(steps):
            if task is not None:
                if task.cancelled:
                    break
                task.set_progress(step, steps, f"rendering part {step + 1} of {steps}")
            time.sleep(0.2)
        body = json.dumps({"report": environ["PATH_INFO"][9:], "rows": 42}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\n"]


def make_app(global_config: dict[str, str], **settings: str) -> Any:
    """The PasteDeploy app factory (``use = call:examples.demo_app:make_app``)."""
    return app
