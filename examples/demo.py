"""The demo: serve examples.demo_app wrapped, submit a report, follow it.

Run:  python -m examples.demo
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

from werkzeug.serving import make_server

from asyncwsgi import AsyncMiddleware
from examples.demo_app import app


def main() -> None:
    application = AsyncMiddleware(app, paths=["/reports/*"])
    server = make_server("127.0.0.1", 0, application, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.port}"
    print(f"serving examples.demo_app on {base} with /reports/* marked")
    try:
        request = urllib.request.Request(base + "/reports/q3", data=b"{}", method="POST")
        with urllib.request.urlopen(request) as response:
            print(response.status, response.reason, "Location:", response.headers["Location"])
            location = base + response.headers["Location"]
        while True:
            with urllib.request.urlopen(location) as response:
                body = response.read()
                if response.status != 202:
                    print(response.status, response.reason, body.decode())
                    break
                progress = json.loads(body)["progress"]
                print(202, "progress:", progress and progress["message"])
            time.sleep(0.25)
    finally:
        server.shutdown()
        application.close()


if __name__ == "__main__":
    main()
