"""gunicorn settings for the test servers: no control socket (gunicorn 25.1
and later open one in the home directory by default, and servers started at
once would fight over it; older versions ignore the setting)."""

control_socket_disable = True
