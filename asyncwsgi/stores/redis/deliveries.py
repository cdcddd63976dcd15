"""Completion callbacks in Redis: claiming the due ones, settling each."""

from __future__ import annotations

import json
import secrets
from typing import Any, cast

from ...task import Delivery
from .codec import num, text
from .scripts import Scripts

__all__ = ["claim", "settle"]


def claim(scripts: Scripts, prefix: str, now: float, lease: float, limit: int) -> list[Delivery]:
    """Up to ``limit`` deliveries due at ``now``, claimed for ``lease`` seconds."""
    token = secrets.token_hex(8)
    answer = cast(
        "list[Any]",
        scripts.run(
            "claim_callbacks",
            [prefix + "callbacks"],
            [num(now), num(now + lease), int(limit), token],
        ),
    )
    deliveries = []
    for i in range(0, len(answer), 6):
        task_id, callback, status, finished, attempts, deadline = answer[i : i + 6]
        url, status_url = json.loads(callback)
        deliveries.append(
            Delivery(
                text(task_id),
                url,
                status_url,
                int(status),
                float(finished),
                int(attempts),
                float(deadline),
                token,
            )
        )
    return deliveries


def settle(scripts: Scripts, prefix: str, delivery: Delivery, retry_at: float | None) -> bool:
    """Forget a claimed delivery (``retry_at`` None) or make it due again."""
    settled = scripts.run(
        "settle_callback",
        [f"{prefix}cb:{delivery.task_id}", prefix + "callbacks"],
        [delivery.task_id, delivery.claim, "" if retry_at is None else num(retry_at)],
    )
    return bool(settled)
