"""The store's Lua scripts, read from ``lua/`` beside this module, and the one
place where a script runs.

Each ``lua/<step>.lua`` is one atomic step. A first line ``-- uses: a b``
names the parts of ``lua/lib/`` it needs (after ``lib/common.lua``, which every
script gets): the source sent to Redis is those parts, then the step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from .replicas import CONFIRMED

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster
    from redis.commands.core import Script

    from .replicas import Replication

__all__ = ["STEPS", "Scripts", "source"]

#: Every script the store runs, by the name of its file.
STEPS = (
    "create_task",
    "read_tombstone",
    "mark_listener",
    "start_task",
    "renew_leases",
    "set_progress",
    "finish_task",
    "delete_task",
    "count_states",
    "append_chunk",
    "reserve_bytes",
    "release_bytes",
    "want_room",
    "drop_body",
    "stored_bytes",
    "list_page",
    "claim_callbacks",
    "settle_callback",
)

_USES = "-- uses:"


_LUA = files(__package__ or __name__) / "lua"


def _read(name: str) -> str:
    path = _LUA
    for part in name.split("/"):
        path = path / part
    return path.read_text(encoding="utf-8")


@cache
def source(step: str) -> str:
    """The Lua that Redis runs for ``step``: the library parts it uses, then
    the step itself."""
    text = _read(f"{step}.lua")
    parts = ["common"]
    first = text.split("\n", 1)[0]
    if first.startswith(_USES):
        parts += first[len(_USES) :].split()
    return "\n".join([*(_read(f"lib/{part}.lua") for part in parts), text])


class Scripts:
    """The registered scripts of one client. Every script call of the store
    goes through :meth:`run`, so that what must follow each write (say,
    waiting for replicas) is added in one place."""

    def __init__(
        self,
        client: Callable[[], redis.Redis | RedisCluster],
        lib_args: list[str],
        replication: Replication | None = None,
    ) -> None:
        # (A function: the client is made when first needed.)
        self.client = client
        #: With ``min_replicas``: the steps in ``CONFIRMED`` wait for replicas.
        self.replication = replication
        # The library's arguments (prefix, tombstone_ttl in ms, max_tombstones),
        # ARGV[1..3] of every script.
        self.lib_args = lib_args
        self._scripts: dict[str, Script] = {}

    def run(self, step: str, keys: list[str], args: list[Any]) -> Any:
        """Run ``step`` with ``keys`` and the library's arguments then ``args``;
        the script's answer (confirmed by replicas, with ``min_replicas``, for
        the steps an answer depends on)."""
        if self.replication is not None and step in CONFIRMED:
            client = self.client()
            script = self._script(step, client)
            return self.replication.run(client, script, keys, [*self.lib_args, *args])
        return self.run_unconfirmed(step, keys, args)

    def run_unconfirmed(self, step: str, keys: list[str], args: list[Any]) -> Any:
        """:meth:`run` without waiting for replicas (to undo a write that
        they did not confirm)."""
        client: Any = self.client()
        script = self._script(step, client)
        try:
            # EVALSHA from the client itself: redis-py's Script.__call__ adds
            # two imports and two isinstance checks to every call (about 15 us
            # of the 100 us a step costs its caller).
            return client.evalsha(script.sha, len(keys), *keys, *self.lib_args, *args)
        except NoScriptError:
            # Not on this server (restarted, failed over, flushed): the script
            # object loads it and runs it.
            script_call: Any = script
            return script_call(keys=keys, args=[*self.lib_args, *args], client=client)

    def _script(self, step: str, client: redis.Redis | RedisCluster) -> Script:
        script = self._scripts.get(step)
        if script is None:
            # Sent to Redis by its digest (EVALSHA), loaded on the first NOSCRIPT.
            # (Through Any: redis-py releases annotate register_script for a
            # plain Redis only, or not at all; the store runs it on a cluster too.)
            any_client: Any = client
            script = self._scripts[step] = any_client.register_script(source(step))
        return script
