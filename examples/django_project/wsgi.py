"""Django wrapped by asyncwsgi, options from ``settings.ASYNCWSGI``.

Run it:    python -m gunicorn --bind 127.0.0.1:8000 examples.django_project.wsgi:application
Try it:    curl -i -X POST http://127.0.0.1:8000/reports/q3
           curl -i http://127.0.0.1:8000/status/<id>
"""

import os

from asyncwsgi.contrib.django import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")

application = get_wsgi_application()
