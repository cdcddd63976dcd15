"""What ``max_result`` counts: the response as stored, that is its status
line, its headers (as ``name: value`` lines) and its body together; the
failed task's answer and the docs say so."""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.servers import wsgi_server

ROOT = Path(__file__).resolve().parent.parent
CAP = 1000
# "200 OK" and "Content-Length: NNN\r\n" as capture() counts them.
HEAD = len("200 OK") + len("Content-Length") + 3 + 4


def _call(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _result(port: int, size: int) -> tuple[int, bytes]:
    status, headers, _ = _call(port, "POST", f"/work/sized?n={size}")
    assert status == 202
    location = urlsplit(headers["Location"]).path
    deadline = time.monotonic() + 10
    while True:
        status, headers, body = _call(port, "GET", location)
        if status != 202:
            return status, body
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.fixture(scope="module")
def capped(tmp_path_factory: Any) -> Iterator[int]:
    log = Path(tmp_path_factory.mktemp("cap")) / "waitress.log"
    env = {"ASYNCWSGI_TEST_MAX_RESULT": str(CAP)}
    with wsgi_server("waitress", "tests.apps.hostile_app:application", log, env) as port:
        yield port


def test_max_result_counts_the_status_line_and_headers_with_the_body(capped: int) -> None:
    fits = CAP - HEAD
    status, body = _result(capped, fits)
    assert status == 200 and body == b"x" * fits
    status, body = _result(capped, fits + 1)
    assert status == 500
    assert body.decode().strip() == (
        f"the result was too large: its status line, headers and body passed "
        f"max_result ({CAP} bytes)"
    )


def test_the_docs_say_what_max_result_counts() -> None:
    results = " ".join((ROOT / "docs" / "results.md").read_text().split())
    options = (ROOT / "docs" / "options.md").read_text()
    row = re.search(r"^\| `max_result` \|.*$", options, re.MULTILINE)
    assert row is not None and "status line, headers and body" in row.group(0)
    assert "response body passed" not in results
    assert "its status line, headers and body passed max_result" in results
