"""Reading a spooled body ahead of its writer: while the server sends one
batch of chunks to the client, a thread fetches the next batch from Redis
(one round trip each), so that Redis and the client's socket are busy at
the same time."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

__all__ = ["read_ahead"]

# How long the fetching thread waits for room before it looks whether the
# reader went away (a client that disconnected closes the iterator).
_POLL = 0.1


def read_ahead(
    fetch: Callable[[int, int], list[bytes]], first: int, last: int, batch: int
) -> Iterator[bytes]:
    """Chunks ``first`` to ``last`` (inclusive) in order. ``fetch(a, b)``
    answers chunks ``a`` to ``b`` (raising if it cannot); it is called with
    ``batch`` chunks at a time, by a thread that keeps at most one batch
    ready beyond the one being fetched (so a reader holds at most three
    batches). A fetch's error is raised to the reader, in order."""
    if last - first < batch:
        yield from fetch(first, last)  # one round trip: no thread
        return
    ready: queue.Queue[list[bytes] | BaseException] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand(item: list[bytes] | BaseException) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        index = first
        try:
            while index <= last:
                end = min(last, index + batch - 1)
                if not hand(fetch(index, end)):
                    return
                index = end + 1
        except BaseException as exc:  # raised again by the reader, in its thread
            hand(exc)

    thread = threading.Thread(target=fill, name="asyncwsgi-read-ahead", daemon=True)
    thread.start()
    try:
        remaining = last - first + 1
        while remaining > 0:
            item = ready.get()
            if isinstance(item, BaseException):
                raise item
            remaining -= len(item)
            yield from item
    finally:
        stop.set()
