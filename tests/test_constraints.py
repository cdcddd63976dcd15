"""The locked sets CI installs agree with what setup.cfg declares.

constraints/ci.txt is compiled from the extras .ci/run installs; a
requirement added to setup.cfg without compiling again would be installed at
whatever version the day brings, which is what the lock exists to prevent.
constraints/lowest.txt holds the declared lower bounds themselves.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _pins(name: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints" / name).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==([^\s;]+)", line)
        if match:
            pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def _requirements(*extras: str) -> list[Requirement]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += config["options.extras_require"][extra].splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    "requirement", _requirements("test", "lint", "bench"), ids=lambda r: r.name
)
def test_every_requirement_ci_installs_is_locked_within_its_range(
    requirement: Requirement,
) -> None:
    pins = _pins("ci.txt")
    name = canonicalize_name(requirement.name)
    assert name in pins, f"{name} is not in constraints/ci.txt: compile it again"
    assert requirement.specifier.contains(pins[name], prereleases=True), (
        f"constraints/ci.txt pins {name}=={pins[name]}, outside {requirement}"
    )


def test_the_lowest_set_holds_the_declared_lower_bounds() -> None:
    pins = _pins("lowest.txt")
    declared = {canonicalize_name(r.name): r.specifier for r in _requirements("test")}
    for name in ("redis", "celery", "rq", "werkzeug"):
        specifier = declared[canonicalize_name(name)]
        (lower,) = (spec.version for spec in specifier if spec.operator == ">=")
        assert pins[name] == Version(lower), f"{name}: lowest.txt has {pins[name]}, not {lower}"
