"""Settings of the example Django project whose reports run on Django's
Tasks framework: django-tasks-db's database backend and its ``db_worker``,
SQLite for everything (no broker, no Redis). Files go in ``$EXAMPLE_DATA``
(the current directory by default)."""

import os
from pathlib import Path

DATA = Path(os.environ.get("EXAMPLE_DATA", ".")).resolve()

SECRET_KEY = "example-only-not-secret"
DEBUG = False  # db_worker would run under the autoreloader
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "examples.django_tasks_project.urls"
WSGI_APPLICATION = "examples.django_tasks_project.wsgi.application"
INSTALLED_APPS = ["django_tasks", "django_tasks_db"]
MIDDLEWARE: list[str] = []
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA / "db.sqlite3",
        # Web processes enqueue while workers claim: wait for the write lock.
        "OPTIONS": {"timeout": 20},
    }
}
USE_TZ = True
TIME_ZONE = "UTC"

# Django's Tasks framework: tasks are rows in the database, run by db_worker.
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

# The keyword arguments of asyncwsgi.AsyncMiddleware (the executor is given
# in wsgi.py, once Django is set up). The task store is SQLite too: the web
# processes and the workers open the same file.
ASYNCWSGI = {"paths": ["/reports/*"], "methods": ["POST"], "store": f"sqlite:///{DATA}/tasks.db"}
