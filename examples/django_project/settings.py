"""Settings of the example Django project (no database needed)."""

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "examples.django_project.urls"
WSGI_APPLICATION = "examples.django_project.wsgi.application"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
TIME_ZONE = "UTC"

# The keyword arguments of asyncwsgi.AsyncMiddleware.
ASYNCWSGI = {"paths": ["/reports/*"], "methods": ["POST"], "max_workers": 4}
