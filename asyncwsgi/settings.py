"""The settings of one middleware: every option checked by its row of the
table (:mod:`asyncwsgi.options`), the rules across options, and the result
frozen, so the parts of the HTTP side read one value that cannot change
under them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from .executors import Executor
from .options import OPTIONS
from .patterns import Pattern, compile_patterns
from .stores import Store

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["POOL_SIZE", "Settings", "check_budget"]

# Threads of the default pool when max_workers is not given.
POOL_SIZE = 8


@dataclass(frozen=True)
class Settings:
    """One field per option (same name, same order as the table; a test
    holds them together), as the middleware keeps it."""

    paths: list[Pattern]
    methods: frozenset[str]
    status_path: str
    store: Store | str | None
    max_workers: int | None
    max_pending: int
    result_ttl: float
    max_body: int
    max_result: int
    spool_threshold: int
    max_stored_bytes: int | None
    results_dir: str | None
    max_tombstones: int | None
    tombstone_ttl: float | None
    busy_timeout: float | None
    chunk_size: int | None
    spool_ttl: float | None
    local_copies: int | None
    min_replicas: int | None
    replica_timeout: float | None
    retry_after: int
    max_retry_after: int
    prefer_paths: list[Pattern]
    max_wait: float
    max_waiting: int | None
    owner: Callable[[WSGIEnvironment], str | None] | None
    lease: float
    timeout: float | None
    queue_timeout: float
    executor: Executor | None
    location_base: str | None
    metrics_path: str | None
    list_tasks: bool | None
    callback_allow: list[str] | None
    callback_secret: str | None

    @classmethod
    def build(cls, values: Mapping[str, Any]) -> Settings:
        """Every option of ``values`` (the constructor's ``locals()``) checked
        by its rule, then the rules across options; the first mistake is a
        ValueError or TypeError that says what is expected."""
        given = {o.name: o.check(o.name, values[o.name]) for o in OPTIONS}
        if given["executor"] is not None and given["max_workers"] is not None:
            raise ValueError(
                "max_workers sizes the default thread pool; with executor= give the "
                "executor its own size (ThreadExecutor(max_workers=...))"
            )
        if given["executor"] is None and given["max_workers"] is None:
            given["max_workers"] = POOL_SIZE
        status_path = given["status_path"]
        metrics_path = given["metrics_path"]
        if metrics_path is not None and metrics_path.startswith(status_path):
            raise ValueError(f"metrics_path must not be under status_path, not {metrics_path!r}")
        if given["results_dir"] is not None and isinstance(given["store"], Store):
            raise ValueError("results_dir is an option of the store given: set it there")
        if given["callback_allow"] is not None and given["callback_secret"] is None:
            raise ValueError("callback_allow needs callback_secret, to sign the callbacks")
        # A cap below the starting value would mean the starting value.
        given["max_retry_after"] = max(given["max_retry_after"], given["retry_after"])
        for name in ("paths", "prefer_paths"):
            _refuse_overlap(given[name], name, status_path, given["methods"])
        return cls(**given)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_budget(max_result: int, max_stored_bytes: int | None) -> None:
    """The rule between ``max_result`` and the store's byte budget (known
    once the store is open: its default counts too)."""
    if max_stored_bytes is not None and max_result > max_stored_bytes:
        raise ValueError(
            f"max_result ({max_result}) is larger than max_stored_bytes "
            f"({max_stored_bytes}): a result's writer reserves max_result bytes of "
            "the budget, so no result above the threshold could ever be stored; "
            "lower max_result or raise max_stored_bytes"
        )


def _refuse_overlap(
    patterns: list[Pattern], name: str, status_path: str, methods: frozenset[str]
) -> None:
    """A pattern meant for paths under status_path would mark requests that
    never reach the app (status URLs are answered first): refuse it. A
    pattern for every path (``/*``) is fine: it means everything else."""
    under = status_path + "A" * 32
    elsewhere = "/" + "A" * 32
    for pattern in patterns:
        match = compile_patterns([pattern])
        if (isinstance(pattern, str) and pattern.startswith(status_path)) or any(
            match(under, method) is not None and match(elsewhere, method) is None
            for method in methods or frozenset({"GET"})
        ):
            raise ValueError(
                f"{name}: pattern {pattern!r} overlaps status_path {status_path!r}; "
                "requests there are status requests and never reach the app: narrow "
                "the pattern or choose another status_path"
            )
