"""A Django project in one module, behind asyncwsgi, whose marked view answers
what Django read of the request body, for tests/test_request_fidelity.py.

``python -m gunicorn tests.apps.django_echo:application``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path


def echo(request: HttpRequest) -> Any:
    data = request.body
    return JsonResponse(
        {
            "length": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "content_length": request.META.get("CONTENT_LENGTH"),
            "task": "asyncwsgi.task" in request.environ,
        }
    )


urlpatterns = [path("echo", echo)]

settings.configure(
    DEBUG=False,
    SECRET_KEY="not-a-secret",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    DATABASES={},
    ASYNCWSGI={"paths": ["/echo"], "status_path": "/_status/"},
)

from asyncwsgi.contrib.django import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
