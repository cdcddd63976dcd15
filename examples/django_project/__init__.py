"""A minimal Django project wrapped by asyncwsgi.

Run it:    python -m gunicorn --bind 127.0.0.1:8000 examples.django_project.wsgi:application
"""
