"""The task list: ``GET`` on ``status_path`` itself, one page of the caller's
tasks, newest first (its query is parsed in :mod:`asyncwsgi.listing`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..listing import BadQuery, encode_cursor, parse_list_query
from ..owner import owner_hash
from .accepted import encode_json, iso
from .responses import not_found, text
from .urls import StatusURLs

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ..settings import Settings
    from ..stores import Store

__all__ = ["TaskList"]


class TaskList:
    """``task_list(environ, start_response)``: on when ``list_tasks`` is
    True, or when it is None and ``owner`` is set (then the caller's own)."""

    def __init__(self, store: Store, settings: Settings, urls: StatusURLs) -> None:
        self.store = store
        self.owner = settings.owner
        self.list_tasks = settings.list_tasks
        self.urls = urls

    @property
    def on(self) -> bool:
        """Whether the list answers (else it is a 404, and the store keeps
        no index for it)."""
        if self.owner is None:
            return bool(self.list_tasks)
        return self.list_tasks is not False

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        owner: str | None = None
        if self.owner is None:
            if not self.list_tasks:
                return not_found(environ, start_response)
        else:
            if self.list_tasks is False:
                return not_found(environ, start_response)
            value = self.owner(environ)
            if not value:
                return text(403, "this request has no owner to list the tasks of")(
                    environ, start_response
                )
            owner = owner_hash(value)
        try:
            query = parse_list_query(environ.get("QUERY_STRING", ""))
        except BadQuery as exc:
            return text(400, str(exc))(environ, start_response)
        limit = query.limit
        records = self.store.list_tasks(
            owner, state=query.state, before=query.before, limit=limit + 1
        )
        page = records[:limit]
        tasks: list[dict[str, Any]] = [
            {
                "id": record.id,
                "state": record.state,
                "status_url": self.urls(environ, record.id),
                "created": iso(record.created),
                "started": iso(record.started),
                "finished": iso(record.finished),
                "progress": record.progress,
                "status": None if record.result is None else record.result.code,
            }
            for record in page
        ]
        next_cursor = encode_cursor(page[-1]) if len(records) > limit else None
        body = encode_json({"tasks": tasks, "next": next_cursor}).encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]
