"""The parts of the HTTP side made for one middleware, each given what it
needs (the store, the settings, the URL builder, the parts it hands to)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..callbacks import CallbackSender, parse_secret
from ..patterns import pattern_label
from .accepted import Accepted
from .callbacks import SenderPerProcess
from .scrape import Scrape
from .status import Status
from .stream import Streams
from .submission import Submission
from .tasklist import TaskList
from .urls import StatusURLs
from .waits import Waits

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from ..executors import Executor
    from ..runner import TaskRunner
    from ..settings import Settings
    from ..stores import Store

__all__ = ["Answers", "make_answers"]


@dataclass(frozen=True)
class Answers:
    urls: StatusURLs
    accepted: Accepted
    scrape: Scrape
    status: Status
    submission: Submission
    #: The callback sender, when callbacks are on (``callback_allow``).
    callbacks: CallbackSender | None
    sender: SenderPerProcess | None
    #: The waiting slots, told of each server thread that brings a task request.
    waits: Waits


def make_answers(
    app: WSGIApplication,
    store: Store,
    settings: Settings,
    *,
    executor: Executor,
    runner: TaskRunner,
    closing: threading.Event,
) -> Answers:
    """``closing`` is set once the middleware closes (no new tasks)."""
    urls = StatusURLs(settings.status_path, settings.location_base)
    accepted = Accepted(settings, urls)
    waits = Waits(store, settings)
    callbacks: CallbackSender | None = None
    sender: SenderPerProcess | None = None
    if settings.callback_allow is not None and settings.callback_secret is not None:
        callbacks = CallbackSender(store, parse_secret(settings.callback_secret))
        sender = SenderPerProcess(callbacks, closing)
        sender.start()
    task_list = TaskList(store, settings, urls)
    # The store keeps the list's index only while a list is on.
    store.use_listing(task_list.on)
    status = Status(
        store,
        settings,
        executor=executor,
        accepted=accepted,
        task_list=task_list,
        streams=Streams(store, settings, urls, waits),
        waits=waits,
        callbacks=sender,
    )
    submission = Submission(
        app,
        store,
        settings,
        executor=executor,
        runner=runner,
        urls=urls,
        accepted=accepted,
        status=status,
        waits=waits,
        sender=sender,
        closing=closing,
    )
    scrape = Scrape(store, map(pattern_label, [*settings.paths, *settings.prefer_paths]))
    return Answers(urls, accepted, scrape, status, submission, callbacks, sender, waits)
