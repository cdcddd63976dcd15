"""Waiting for a task in Redis: a long poll blocks on ``done:<id>``, an event
stream listens on ``changed:<id>``. Each marks the task first, so that its
changes wake it from then on (no task pays for listeners it does not have)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.cluster import RedisCluster

from .scripts import Scripts

__all__ = ["block_until_done", "listen"]


def block_until_done(
    client: redis.Redis | RedisCluster,
    scripts: Scripts,
    prefix: str,
    task_id: str,
    seconds: float,
    limit: float | None,
) -> None:
    """Block until the task finishes or is deleted, at most ``seconds``, and
    at most ``limit`` (the client's socket timeout, if any)."""
    if limit is not None:
        seconds = min(seconds, limit)
    # Marked first, so that its finish wakes this waiter; a task that is not
    # active any more has nothing to wait for: the caller reads it again.
    if not scripts.run("mark_listener", [f"{prefix}task:{task_id}"], ["waited"]):
        return
    # Whole milliseconds: Redis reads a timeout under 1 ms as "forever". A
    # finish pushes to done:<id> (kept a minute), so a finish that came
    # before this call is seen at once. Rotating the list onto itself leaves
    # it in place for the other waiters: every one of them wakes.
    done = f"{prefix}done:{task_id}"
    try:
        # (Redis takes a fractional timeout; some redis-py releases annotate
        # it as int, so the call goes through Any.)
        blocking: Any = client
        blocking.blmove(done, done, max(0.001, round(seconds, 3)), "RIGHT", "LEFT")
    except redis.TimeoutError:
        pass  # the socket's timeout, not the wait's: the caller reads again


@contextmanager
def listen(
    client: redis.Redis,
    scripts: Scripts,
    prefix: str,
    task_id: str,
    limit: float | None,
) -> Iterator[Callable[[float], None]]:
    """Listen for the changes of a task, from before the caller's next read;
    give a function that blocks until one may have come (at most its
    argument, and at most ``limit``, in seconds)."""
    # (Through Any: redis-py 8.2 annotates pubsub(), earlier ones do not.)
    subscriber: Any = client
    pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(f"{prefix}changed:{task_id}")
        # Marked once subscribed and before the caller reads: from then on
        # every change of this task publishes.
        scripts.run("mark_listener", [f"{prefix}task:{task_id}"], ["watched"])

        def block(timeout: float) -> None:
            if limit is not None:
                timeout = min(timeout, limit)
            try:
                pubsub.get_message(timeout=timeout)
            except redis.TimeoutError:
                pass  # the socket's timeout: the caller reads again

        yield block
    finally:
        pubsub.close()
