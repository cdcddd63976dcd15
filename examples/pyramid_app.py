"""Pyramid: a view added with ``background=True`` runs as a task.

Run it:    python -m pyramid.scripts.pserve examples/pyramid.ini
           (or ``pserve examples/pyramid.ini`` with the repository on PYTHONPATH)
Try it:    curl -i -X POST http://127.0.0.1:8000/reports/q3
           curl -i http://127.0.0.1:8000/status/<id>
"""

from __future__ import annotations

import time
from typing import Any

from pyramid.config import Configurator
from pyramid.request import Request


def report(request: Request) -> Any:
    task = request.environ.get("asyncwsgi.task")
    seconds = float(request.registry.settings.get("step_seconds", 1.0))
    steps = 5
    for step in range(steps):
        if task is not None:
            if task.cancelled:
                break
            task.set_progress(step, steps, f"rendering part {step + 1} of {steps}")
        time.sleep(seconds)
    return {"report": request.matchdict["name"], "rows": 42}


def about(request: Request) -> str:
    return f"POST to /reports/{request.matchdict['name']} to render it in the background\n"


def main(global_config: dict[str, str], **settings: str) -> Any:
    with Configurator(settings=settings) as config:
        config.include("asyncwsgi.contrib.pyramid")  # options: the asyncwsgi.* settings
        config.add_route("report", "/reports/{name}")
        config.add_view(
            report, route_name="report", request_method="POST", renderer="json", background=True
        )
        config.add_view(about, route_name="report", request_method="GET", renderer="string")
        return config.make_wsgi_app()
