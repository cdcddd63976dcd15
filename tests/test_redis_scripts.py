"""The Redis store's scripts are files in the package: each loads, and what
setup.cfg ships as package data covers every one of them."""

from __future__ import annotations

import configparser
import fnmatch
from pathlib import Path

import pytest

from asyncwsgi.stores.redis.scripts import STEPS, source

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "asyncwsgi" / "stores" / "redis"


def test_every_lua_file_is_package_data() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    globs = [
        pattern.strip()
        for pattern in config["options.package_data"]["asyncwsgi.stores.redis"].split(",")
    ]
    files = sorted(path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.lua"))
    assert files, "no .lua files found"
    unshipped = [name for name in files if not any(fnmatch.fnmatch(name, g) for g in globs)]
    assert unshipped == []


def test_every_step_has_a_file_and_every_file_a_step() -> None:
    steps = {path.stem for path in (PACKAGE / "lua").glob("*.lua")}
    assert steps == set(STEPS)


@pytest.mark.parametrize("step", STEPS)
def test_step_loads_with_its_library(step: str) -> None:
    lua = source(step)
    assert lua.startswith("-- Every script starts with this.")
    assert "redis.call" in lua
