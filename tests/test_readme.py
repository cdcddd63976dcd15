"""Every snippet of the README runs as written.

The Python blocks headed ``# name.py`` are saved under that name; every
shell command is run, with port 8000 changed to a free port (for pserve,
in a copy of its ini file); servers are started, sent a task and stopped; the
``curl`` sessions run against ``myapp.py`` served as the README says, and
each answer is compared with the README's (status line, header names, and a
result body when the README shows it whole); ``<id>`` stands for the id of
the last 202's ``Location``, as the README says. Two commands are not run
here: ``pip install`` (the README's install lines are checked in a fresh
virtualenv) and ``bash .ci/run`` (which runs this test).
"""

from __future__ import annotations

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
NOT_RUN = ("pip install ", "bash .ci/run")
SERVERS = ("python -m gunicorn ", "python -m flask ", "python -m pyramid.scripts.pserve ",
           "python -m examples.", "asyncwsgi serve ")  # fmt: skip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", README, re.MULTILINE | re.DOTALL)


def commands() -> list[str]:
    """Every shell command of the README's ``sh`` blocks and of its
    frameworks table, split at ``&&``, in order."""
    found: list[str] = []
    for block in blocks("sh"):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                found.extend(part.strip() for part in line.split(" && "))
    frameworks = README.split("\n## Frameworks\n", 1)[1].split("\n## ", 1)[0]
    for row in re.findall(r"^\|.*\|$", frameworks, re.MULTILINE):
        found.extend(re.findall(r"`(python -m [^`]+)`", row.rsplit("|", 2)[1]))
    return found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("readme")
    for block in blocks("python"):
        header = re.match(r"# (\w+\.py)\n", block)
        assert header, f"a README python block without a '# name.py' header:\n{block}"
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
    import configparser

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    install = README.split("\n## Install and try it\n", 1)[1].split("\n## ", 1)[0]
    for extra in setup["options.extras_require"]:
        assert f"`{extra}`" in install, f"the README's install section does not name [{extra}]"


def test_the_readme_links_to_files_that_exist():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to {target}"


def test_the_readme_has_the_snippets_this_test_runs():
    assert {"myapp.py", "flaskapp.py"} <= {
        m.group(1) for b in blocks("python") if (m := re.match(r"# (\w+\.py)", b))
    }
    assert len(blocks("console")) >= 2
    assert any(c.startswith("python -m gunicorn ") and "myapp:" in c for c in commands())


@pytest.mark.parametrize("command", [c for c in commands() if c.startswith(SERVERS)])
def test_every_server_command_serves_a_task(command, workdir):
    with served(command, workdir) as port:
        response = fetch(
            f"http://127.0.0.1:{port}/reports/q3", method="POST", data=b"x=1", timeout=60
        )
        assert response.status == 200, (command, response.status, response.body)
        assert b"q3" in response.body


@pytest.mark.parametrize(
    "command",
    [c for c in commands() if not c.startswith(SERVERS) and not c.startswith(NOT_RUN)],
)
def test_every_other_command_succeeds(command, workdir):
    myapp = next(c for c in commands() if c.startswith("python -m gunicorn ") and "myapp:" in c)
    with served(myapp, workdir) as port:
        result = run(command, workdir, port)
    assert result.returncode == 0, (command, result.stdout, result.stderr)


def _sessions() -> list[tuple[str, list[str]]]:
    """(command, the README's answer lines) of every ``$ `` line."""
    sessions: list[tuple[str, list[str]]] = []
    for block in blocks("console"):
        for line in block.splitlines():
            if line.startswith("$ "):
                sessions.append((re.sub(r"\s+#.*$", "", line[2:]).strip(), []))
            else:
                sessions[-1][1].append(line)
    return sessions


def test_the_curl_sessions_answer_as_the_readme_shows(workdir):
    myapp = next(c for c in commands() if c.startswith("python -m gunicorn ") and "myapp:" in c)
    task_id = None
    with served(myapp, workdir) as port:
        for command, expected in _sessions():
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
