"""Django wrapped by asyncwsgi; its reports run on Django's Tasks framework.

Run it (in a directory of your choice; the SQLite files go there):

    $ export DJANGO_SETTINGS_MODULE=examples.django_tasks_project.settings
    $ python -m django migrate
    $ python -m django db_worker --interval 0.1
    $ python -m gunicorn -w 2 -b 127.0.0.1:8000 examples.django_tasks_project.wsgi:application

Try it:    curl -i -X POST http://127.0.0.1:8000/reports/q3
           curl -i http://127.0.0.1:8000/status/<id>
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_tasks_project.settings")
django.setup()

from asyncwsgi.contrib.django import get_wsgi_application  # noqa: E402
from asyncwsgi.executors.django_tasks import DjangoTasksExecutor  # noqa: E402

# The worker imports this module too, and calls Django through it.
application = get_wsgi_application(
    executor=DjangoTasksExecutor("examples.django_tasks_project.wsgi:application")
)
