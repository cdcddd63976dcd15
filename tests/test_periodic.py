"""The loop behind every periodic duty (heartbeat, sweeper, janitor): it
outlives a bad round, stops for good, and a forked child runs its own."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import pytest

from asyncwsgi.periodic import Periodic


def _failing(failures: list[Exception]) -> tuple[list[float], Callable[[], None]]:
    """A duty's work that records each round and raises ``failures`` one a
    round until none is left; the rounds' times."""
    rounds: list[float] = []

    def work() -> None:
        rounds.append(time.monotonic())
        if failures:
            raise failures.pop(0)

    return rounds, work


def _until(rounds: list[float], count: int, deadline: float) -> None:
    while len(rounds) < count:
        assert time.monotonic() < deadline, rounds
        time.sleep(0.01)


def test_a_bad_round_is_logged_once_and_the_duty_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds, work = _failing([RuntimeError("bad round"), RuntimeError("bad again")])
    duty = Periodic("asyncwsgi-test-duty", work, 0.05, what="the test duty")
    caplog.set_level(logging.WARNING, logger="asyncwsgi")
    duty.start()
    try:
        _until(rounds, 5, time.monotonic() + 5)
    finally:
        duty.stop()
    failed = [r for r in caplog.records if "the test duty failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None  # once per run of failures
    assert any("the test duty again after" in r.getMessage() for r in caplog.records)
    # Stopped means stopped: no round after stop() returned, and no restart.
    count = len(rounds)
    duty.start()
    time.sleep(0.2)
    assert len(rounds) == count
    assert not [t for t in threading.enumerate() if t.name == "asyncwsgi-test-duty"]


def test_a_forked_child_runs_its_own(tmp_path: os.PathLike[str]) -> None:
    mark = os.path.join(tmp_path, "child")

    def work() -> None:
        if os.getpid() != parent:
            with open(mark, "a") as file:
                file.write("ran\n")

    parent = os.getpid()
    duty = Periodic("asyncwsgi-test-forked", work, 0.05, what="the forked duty", survive_fork=True)
    duty.start()
    try:
        pid = os.fork()
        if pid == 0:  # the child: its duty runs a few rounds, then it leaves
            time.sleep(0.5)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        duty.stop()
    with open(mark) as file:
        assert file.read().count("ran") >= 2


def test_an_outage_is_one_line_and_a_bug_keeps_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store that is down is expected, and said in one line; anything else
    is a bug, logged with its traceback."""
    from asyncwsgi.stores.base import StoreUnavailable

    failures: list[Exception] = [StoreUnavailable("Redis: ConnectionError: refused")]
    rounds, work = _failing(failures)
    duty = Periodic(
        "asyncwsgi-test-outage", work, 0.05, what="the test duty", outage=(StoreUnavailable,)
    )
    caplog.set_level(logging.WARNING, logger="asyncwsgi")
    duty.start()
    try:
        deadline = time.monotonic() + 5
        _until(rounds, 3, deadline)
        failures.append(KeyError("a bug"))
        _until(rounds, 6, deadline)
    finally:
        duty.stop()
    failed = [r for r in caplog.records if "the test duty failed" in r.getMessage()]
    assert len(failed) == 2, [r.getMessage() for r in failed]
    outage, bug = failed
    assert outage.exc_info is None and "refused" in outage.getMessage()
    assert bug.exc_info is not None and bug.exc_info[0] is KeyError
