"""The examples of docs/push.md, run as written: the shell ones with curl against a
real server, the JavaScript ones in a real Chromium, the Python one in process."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from asyncwsgi import AsyncMiddleware
from asyncwsgi.owner import by_cookie
from tests.helpers import program, serving
from tests.test_browser import CHROMIUM_ARGS, chromium  # noqa: F401 (fixture)
from tests.test_callbacks import Receiver, receiving

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parent.parent / "docs" / "push.md"
SESSION = "s3cr3t-session"


def examples() -> dict[str, str]:
    text = DOC.read_text()
    found = re.findall(r"<!-- example: ([a-z-]+) -->\n```[a-z]+\n(.*?)```", text, re.DOTALL)
    return dict(found)


def doc_secret() -> str:
    found = re.search(r'callback_secret="(whsec_[^"]+)"', DOC.read_text())
    assert found is not None
    return found.group(1)


@pytest.fixture
def curl() -> str:
    return program("curl")


#: Open unless a test closes it; a request for an event stream opens it. The
#: demo's tasks start once it is open, so a test that closes it before it
#: submits sees its task's progress whatever the machine's load (starting curl
#: on a loaded machine took longer than the demo's whole second of work).
task_gate = threading.Event()


def gated(app: Any) -> Any:
    def gated_app(environ: dict[str, Any], start_response: Any) -> Any:
        if "asyncwsgi.task" in environ:
            assert task_gate.wait(30), "no event stream opened the gate"
        return app(environ, start_response)

    return gated_app


def opened_by_streams(app: Any) -> Any:
    def opening_app(environ: dict[str, Any], start_response: Any) -> Any:
        if "text/event-stream" in environ.get("HTTP_ACCEPT", ""):
            task_gate.set()
        return app(environ, start_response)

    return opening_app


@pytest.fixture
def site() -> Iterator[tuple[str, str, Receiver]]:
    from examples.web import site as page_and_demo

    task_gate.set()
    receiver = Receiver(secret=doc_secret())
    with receiving(receiver) as hooks:
        application = AsyncMiddleware(
            gated(page_and_demo),
            paths=["/reports/*"],
            owner=by_cookie("session"),
            callback_allow=[hooks],
            callback_secret=doc_secret(),
            max_wait=10,
        )
        try:
            with serving(opened_by_streams(application)) as base:
                yield base, hooks.rstrip("/"), receiver
        finally:
            application.close(timeout=5)


def submit(base: str, path: str = "/reports/q3") -> str:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("POST", path, body=b"{}", headers={"Cookie": f"session={SESSION}"})
        response = conn.getresponse()
        response.read()
        assert response.status == 202
        return response.getheader("Location") or ""
    finally:
        conn.close()


def run(definitions: str, expression: str) -> str:
    """JavaScript for page.evaluate(): the example's definitions, then the value
    of ``expression`` (awaited when it is a promise)."""
    return f"(() => {{\n{definitions}\nreturn {expression};\n}})()"


def shell(code: str, **env: str) -> str:
    done = subprocess.run(
        ["bash", "-c", code],
        env={**os.environ, "SESSION": SESSION, **env},
        capture_output=True,
        timeout=30,
        check=True,
    )
    return done.stdout.decode()


def test_the_configuration_block_builds_a_middleware() -> None:
    text = DOC.read_text()
    block = re.search(r"```python\n(from asyncwsgi import AsyncMiddleware.*?)```", text, re.DOTALL)
    assert block is not None
    scope: dict[str, Any] = {"app": lambda environ, start_response: []}
    exec(block.group(1), scope)
    scope["application"].close()


def test_curl_examples(curl: str, site: tuple[str, str, Receiver]) -> None:
    base, hooks, receiver = site
    code = examples()
    task_gate.clear()  # the task waits for its stream
    task = submit(base)
    out = shell(code["sse-curl"], BASE=base, TASK=task)
    assert out.startswith("retry: 1000\n")
    assert "event: progress" in out
    assert out.rstrip().endswith(f'data: {{"status":200,"location":"{task}"}}')
    messages = [
        json.loads(line[6:])["progress"]["message"]
        for line in out.splitlines()
        if line.startswith('data: {"id"') and '"progress":{' in line
    ]
    assert len(messages) >= 2  # progress as it ran, not only the end

    submit(base)
    deadline = time.monotonic() + 10
    while True:  # until the example lists both (it asks for done tasks)
        listed = json.loads(shell(code["list-curl"], BASE=base))
        if len(listed["tasks"]) >= 2:
            break
        assert time.monotonic() < deadline, listed
        time.sleep(0.1)
    assert len(listed["tasks"]) == 2
    assert all(t["state"] == "done" and t["status"] == 200 for t in listed["tasks"])

    out = shell(code["callback-curl"], BASE=base, HOOKS=hooks)
    assert out.startswith("HTTP/1.1 202") or out.startswith("HTTP/1.0 202")
    assert f"Callback-Accepted: {hooks}/report-done" in out
    (delivery,) = receiver.wait_for(1)
    assert delivery.verified["status"] == 200

    # The Python receiver of the docs, on that delivery.
    scope: dict[str, Any] = {}
    exec(code["verify-python"], scope)
    notice = scope["receive"](doc_secret(), delivery.headers, delivery.body)
    assert notice == delivery.verified


def test_javascript_examples(chromium: str, site: tuple[str, str, Receiver]) -> None:  # noqa: F811
    from playwright import sync_api

    base, hooks, receiver = site
    code = examples()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            context.add_cookies([{"name": "session", "value": SESSION, "url": base}])
            page = context.new_page()
            page.goto(base + "/")
            task_gate.clear()  # the task waits for its stream
            followed = page.evaluate(
                run(
                    code["sse-js"],
                    """(async () => {
                        const submitted = await fetch("/reports/js", {method: "POST", body: "{}"});
                        const seen = [];
                        const result = await follow(submitted.headers.get("Location"),
                                                    (doc) => seen.push(doc.progress));
                        return {status: result.status, body: await result.json(), seen};
                    })()""",
                )
            )
            assert followed["status"] == 200
            assert followed["body"] == {"report": "js", "rows": 42}
            assert len([p for p in followed["seen"] if p]) >= 2

            for _ in range(3):
                submit(base)
            listed = page.evaluate(run(code["list-js"], "allTasks()"))
            assert len(listed) == 4  # one from the page, three from here
            assert len({task["id"] for task in listed}) == 4

            location = submit(base, "/reports/hooked")
            headers = {"Cookie": f"session={SESSION}", "Callback-URL": hooks + "/x"}
            parts = urlsplit(base)
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
            conn.request("POST", "/reports/hooked", body=b"{}", headers=headers)
            assert conn.getresponse().status == 202
            conn.close()
            (delivery,) = receiver.wait_for(1)
            assert location
            args = [doc_secret(), delivery.headers, delivery.body.decode()]
            call = "verifyWebhook(%s, %s, %s)"
            assert page.evaluate(run(code["verify-js"], call % tuple(map(json.dumps, args))))
            args[2] = args[2].replace("200", "500")
            assert not page.evaluate(run(code["verify-js"], call % tuple(map(json.dumps, args))))
        finally:
            browser.close()
