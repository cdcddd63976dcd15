"""Django settings of the engine benchmark: django-tasks-db's database
backend on the SQLite file ``BENCH_DJANGO_DB``, queues ``one`` and ``two``."""

import os

SECRET_KEY = "bench-only"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["django_tasks", "django_tasks_db"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("BENCH_DJANGO_DB", ":memory:"),
        "OPTIONS": {"timeout": 20},
    }
}
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["one", "two"]}}
