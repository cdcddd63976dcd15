"""Django settings of the Django Tasks engines in tests/apps/engines.py:
django-tasks-db's database backend on SQLite (``django-db``) or
django-tasks-rq's RQ backend (``django-rq``)."""

from __future__ import annotations

import os

_ENGINE = os.environ.get("ASYNCWSGI_TEST_ENGINE", "django-db")
_REDIS = os.environ.get("ASYNCWSGI_TEST_REDIS", "redis://127.0.0.1:6379/0")

SECRET_KEY = "asyncwsgi-tests-only"
DEBUG = False  # db_worker must not run under the autoreloader
USE_TZ = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django_tasks"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("ASYNCWSGI_TEST_DJANGO_DB", ":memory:"),
        # The web processes enqueue while the workers claim: wait for the lock.
        "OPTIONS": {"timeout": 20},
    }
}
QUEUES = ["asyncwsgi", "idle"]
if _ENGINE == "django-rq":
    INSTALLED_APPS += ["django_rq", "django_tasks_rq"]
    TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": QUEUES}}
    RQ_QUEUES = {name: {"URL": _REDIS} for name in QUEUES}
else:
    INSTALLED_APPS += ["django_tasks_db"]
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": QUEUES}}
