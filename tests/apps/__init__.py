"""Small WSGI apps that tests serve with real servers (gunicorn) by module path."""
