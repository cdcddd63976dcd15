"""Every snippet of the README, and of the docs pages its snippets moved to,
runs as written.

The Python blocks headed ``# name.py`` are saved under that name; every
shell command is run, with port 8000 changed to a free port (for pserve,
in a copy of its ini file); servers are started, sent a task and stopped; the
``curl`` sessions run against ``myapp.py`` served as the README says, and
each answer is compared with the page's (status line, header names, and a
result body when the page shows it whole); ``<id>`` stands for the id of
the last 202's ``Location``, as the README says. Some commands are not run
here: making and activating the virtual environment, ``pip install`` (the
README's first install line is checked to name this checkout) and
``bash .ci/run`` (which runs this test).
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from asyncwsgi.client import fetch
from bench.services import free_port, stop_group, wait_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# The README, and the pages that hold the snippets it had before it became a
# front page: each snippet is run from where it now lives.
PAGES = {
    name: (ROOT / name).read_text()
    for name in ("README.md", "docs/http.md", "docs/frameworks.md", "docs/client.md")
}
NOT_RUN = ("pip install ", "bash .ci/run", "python3 -m venv ", ". .venv/bin/activate")
SERVERS = ("python -m gunicorn ", "python -m flask ", "python -m pyramid.scripts.pserve ",
           "python -m examples.", "asyncwsgi serve ")  # fmt: skip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def commands(text: str = README) -> list[str]:
    """Every shell command of a page's ``sh`` blocks and of the last column
    of its tables, split at ``&&``, in order."""
    found: list[str] = []
    for block in blocks("sh", text):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                found.extend(part.strip() for part in line.split(" && "))
    for row in re.findall(r"^\|.*\|$", text, re.MULTILINE):
        found.extend(re.findall(r"`(python -m [^`]+)`", row.rsplit("|", 2)[1]))
    return found


def every_command() -> list[str]:
    return [command for text in PAGES.values() for command in commands(text)]


def _myapp() -> str:
    return next(c for c in commands() if c.startswith("python -m gunicorn ") and "myapp:" in c)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("readme")
    for block in blocks("python"):
        assert re.match(r"# \w+\.py\n", block), f"a README python block without a header:\n{block}"
    for text in PAGES.values():
        for block in blocks("python", text):
            if header := re.match(r"# (\w+\.py)\n", block):
                (directory / header.group(1)).write_text(block)
    return directory


def _env(workdir: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(workdir), str(ROOT), env.get("PYTHONPATH", "")])
    env["PORT"] = str(port)
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    return env


def _on_port(command: str, port: int, workdir: Path) -> str:
    command = re.sub(r"\b8000\b", str(port), command)
    if command.startswith("python -m pyramid.scripts.pserve "):
        ini = ROOT / command.split()[-1]
        copy = workdir / f"{port}-{ini.name}"
        copy.write_text(ini.read_text().replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
        command = command.replace(command.split()[-1], str(copy))
    return command.replace("python -m", f"{shlex.quote(sys.executable)} -m", 1)


@contextmanager
def served(command: str, workdir: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        _on_port(command, port, workdir),
        shell=True,
        cwd=ROOT,
        env=_env(workdir, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        try:
            wait_port(port, proc, timeout=60)
        except RuntimeError:
            stop_group(proc)
            raise AssertionError(f"{command!r} did not serve: {proc.stderr.read()!r}") from None
        yield port
    finally:
        stop_group(proc)
        if proc.stderr is not None:
            proc.stderr.close()


def run(command: str, workdir: Path, port: int) -> subprocess.CompletedProcess[str]:
    line = _on_port(command, port, workdir)
    if line.startswith("asyncwsgi "):
        line = f"{shlex.quote(sys.executable)} -m {line}"
    return subprocess.run(
        line,
        shell=True,
        cwd=ROOT,
        env=_env(workdir, port),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_readme_names_every_extra():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    install = README.split("\n## Install and try it\n", 1)[1].split("\n## ", 1)[0]
    for extra in setup["options.extras_require"]:
        assert f"`{extra}`" in install, f"the README's install section does not name [{extra}]"


def test_the_readme_says_django_tasks_needs_a_backend():
    install = README.split("\n## Install and try it\n", 1)[1].split("\n## ", 1)[0]
    extras = " ".join(install.split())
    assert "`django-tasks` (with a backend" in extras and "`django-tasks-db`" in extras


def test_the_changelog_keeps_its_form_and_names_what_shipped():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "[Keep a Changelog](https://keepachangelog.com/" in changelog
    versions = re.findall(r"^## \[([^\]]+)\]", changelog, re.MULTILINE)
    assert versions and versions[0] == "Unreleased", versions
    kinds = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    headings = re.findall(r"^### (.+)$", changelog, re.MULTILINE)
    assert headings and set(headings) <= kinds, headings
    text = " ".join(changelog.split())
    for shipped in (
        "RQExecutor", "DjangoTasksExecutor", "Server-Sent Events", "Callback-URL",
        "task list", "spool", "Range", "max_stored_bytes", "queue_timeout",
        "location_base", "Metrics", "Tracing", "CeleryExecutor",
    ):  # fmt: skip
        assert shipped in text, f"the CHANGELOG does not say {shipped!r}"


def test_the_readme_links_to_files_that_exist():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to {target}"


def test_the_readme_is_a_front_page():
    lines = README.count("\n")
    assert lines <= 200, f"the README has {lines} lines; move the detail to docs/"


def test_the_first_pip_install_line_installs_this_checkout():
    """A new user's first install command works today: the distribution is
    not on the package index yet, so it must name this checkout, with an
    extra the checkout declares; and a virtual environment comes first."""
    first = next(line for line in README.splitlines() if re.search(r"\bpip install\b", line))
    words = shlex.split(re.sub(r"\s+#.*$", "", first).split("&&")[0])
    assert words[:3] == ["pip", "install", "-e"], first
    target = re.fullmatch(r"(?P<path>[^\[]+)(?:\[(?P<extras>[^\]]+)\])?", words[3])
    assert target is not None, first
    checkout = (ROOT / target["path"]).resolve()
    assert checkout == ROOT, f"{first!r} does not install this checkout"
    setup = configparser.ConfigParser()
    setup.read(checkout / "setup.cfg")
    assert setup["metadata"]["name"] == "asyncwsgi-middleware"
    for extra in (target["extras"] or "").split(","):
        assert extra in setup["options.extras_require"], (first, extra)
    before = README[: README.index(first)]
    assert "python3 -m venv .venv && . .venv/bin/activate" in before


def test_the_pages_have_the_snippets_this_test_runs():
    saved = {
        m.group(1)
        for text in PAGES.values()
        for b in blocks("python", text)
        if (m := re.match(r"# (\w+\.py)", b))
    }
    assert {"myapp.py", "flaskapp.py"} <= saved
    assert len(blocks("console")) >= 1
    assert len(blocks("console", PAGES["docs/http.md"])) >= 2
    assert any(c.startswith("python -m gunicorn ") and "myapp:" in c for c in commands())
    assert any(c.startswith("python -m flask ") for c in commands(PAGES["docs/frameworks.md"]))
    assert any(c.startswith("asyncwsgi serve ") for c in commands(PAGES["docs/client.md"]))


@pytest.mark.parametrize("command", [c for c in every_command() if c.startswith(SERVERS)])
def test_every_server_command_serves_a_task(command, workdir):
    with served(command, workdir) as port:
        response = fetch(
            f"http://127.0.0.1:{port}/reports/q3", method="POST", data=b"x=1", timeout=60
        )
        assert response.status == 200, (command, response.status, response.body)
        assert b"q3" in response.body


@pytest.mark.parametrize(
    "command",
    [c for c in every_command() if not c.startswith(SERVERS) and not c.startswith(NOT_RUN)],
)
def test_every_other_command_succeeds(command, workdir):
    with served(_myapp(), workdir) as port:
        result = run(command, workdir, port)
    assert result.returncode == 0, (command, result.stdout, result.stderr)


def _sessions(text: str) -> list[tuple[str, list[str]]]:
    """(command, the page's answer lines) of every ``$ `` line."""
    sessions: list[tuple[str, list[str]]] = []
    for block in blocks("console", text):
        for line in block.splitlines():
            if line.startswith("$ "):
                sessions.append((re.sub(r"\s+#.*$", "", line[2:]).strip(), []))
            else:
                sessions[-1][1].append(line)
    return sessions


@pytest.mark.parametrize("page", [name for name, text in PAGES.items() if blocks("console", text)])
def test_the_curl_sessions_answer_as_the_page_shows(page, workdir):
    task_id = None
    with served(_myapp(), workdir) as port:
        for command, expected in _sessions(PAGES[page]):
            if task_id is not None:
                command = command.replace("<id>", task_id)
            assert "<id>" not in command, f"no 202 before {command!r}"
            result = run(command, workdir, port)
            assert result.returncode == 0, (command, result.stderr)
            answer = result.stdout.replace("\r\n", "\n")
            head, _, body = answer.partition("\n\n")
            lines = head.splitlines()
            assert lines[0] == expected[0], (command, answer)
            names = {line.split(":", 1)[0].lower() for line in lines[1:]}
            for line in expected[1:]:
                if not line:
                    break
                if ":" in line and not line.startswith("..."):
                    assert line.split(":", 1)[0].lower() in names, (command, line, answer)
            shown = "\n".join(expected).partition("\n\n")[2].strip()
            if shown and "..." not in shown and "…" not in shown and expected[0].endswith("200 OK"):
                assert body.strip() == shown, (command, answer)
            location = re.search(r"^Location: /status/(\S+)$", head, re.MULTILINE)
            if location:
                task_id = location.group(1)
            time.sleep(0.05)
