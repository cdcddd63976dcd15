"""The wheel's metadata as the package index will show it, built by setuptools
from a copy of the project files (so the checkout gets no build output)."""

from __future__ import annotations

import email.parser
import re
import shutil
import subprocess
import sys
import tarfile
from email.message import Message
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory) -> Message:
    copy = tmp_path_factory.mktemp("project")
    for name in ("setup.cfg", "pyproject.toml", "LICENSE", "LONG_DESCRIPTION.md"):
        shutil.copy(ROOT / name, copy / name)
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "asyncwsgi", copy / "asyncwsgi", ignore=skip)
    out = copy / "out"
    out.mkdir()
    build = (
        "import sys\n"
        "from setuptools import build_meta\n"
        "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", build, str(out)],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr
    dist_info = out / result.stdout.strip().splitlines()[-1]
    return email.parser.Parser().parsestr((dist_info / "METADATA").read_text())


def test_the_license_is_a_pep_639_expression(metadata: Message) -> None:
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["License"] is None
    assert not [c for c in metadata.get_all("Classifier") or [] if c.startswith("License ::")]


def test_the_long_description_has_no_relative_links(metadata: Message) -> None:
    description = metadata.get_payload()
    assert isinstance(description, str)
    assert "AsyncMiddleware" in description
    links = re.findall(r"\]\(([^)]+)\)", description) + re.findall(r'href="([^"]+)"', description)
    relative = [link for link in links if "://" not in link]
    assert not relative, f"links that break on the package index: {relative}"


def test_the_long_description_installs_the_published_name(metadata: Message) -> None:
    # On the index, the install line is the published name; the README (read
    # from a clone) installs the checkout instead.
    assert metadata["Name"] == "asyncwsgi-middleware"
    assert "pip install asyncwsgi-middleware" in str(metadata.get_payload())


def test_the_source_distribution_carries_the_docs(tmp_path: Path) -> None:
    """The long description sends readers to docs/ in the source distribution."""
    names = ["setup.cfg", "pyproject.toml", "LICENSE", "MANIFEST.in", "LONG_DESCRIPTION.md",
             "CHANGELOG.md", "CONTRIBUTING.md", "SECURITY.md", "README.md"]  # fmt: skip
    for name in names:
        shutil.copy(ROOT / name, tmp_path / name)
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "asyncwsgi", tmp_path / "asyncwsgi", ignore=skip)
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=skip)
    out = tmp_path / "out"
    out.mkdir()
    build = (
        "import sys\n"
        "from setuptools import build_meta\n"
        "print(build_meta.build_sdist(sys.argv[1]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", build, str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr
    with tarfile.open(out / result.stdout.strip().splitlines()[-1]) as sdist:
        inside = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    pages = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")}
    assert pages <= inside, sorted(pages - inside)
    assert {"LONG_DESCRIPTION.md", "CHANGELOG.md", "LICENSE", "asyncwsgi/py.typed"} <= inside
