from __future__ import annotations

import os
import time

from django.http import HttpRequest, HttpResponse, JsonResponse

STEP_SECONDS = float(os.environ.get("STEP_SECONDS", "1"))


def report(request: HttpRequest, name: str) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse(f"POST to /reports/{name} to render it in the background\n")
    task = request.environ.get("asyncwsgi.task")
    steps = 5
    for step in range(steps):
        if task is not None:
            if task.cancelled:
                break
            task.set_progress(step, steps, f"rendering part {step + 1} of {steps}")
        time.sleep(STEP_SECONDS)
    return JsonResponse({"report": name, "rows": 42, "pid": os.getpid()})
