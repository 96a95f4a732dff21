"""Flood limits: how denied sends are aggregated in the audit (migration 0013).

A denial counts in one bucket per API key, agent, channel and target per
DENIED_SEND_INTERVAL_SECONDS; only the first of a bucket is audited at once,
and the bucket's total when it closes. A key and agent get at most
MAX_DENIED_TARGETS buckets per interval: further targets count under '*'.
"""

from __future__ import annotations

DENIED_SEND_INTERVAL_SECONDS = 60
MAX_DENIED_TARGETS = 20
OTHER_TARGETS = "*"


def denied_send_target(target: str, known: bool, targets: int) -> str:
    """The bucket a denial of ``target`` counts in: its own if it has one this
    interval (``known``) or the key and agent still have room (``targets``
    buckets so far), else the shared '*' bucket."""
    if known or targets < MAX_DENIED_TARGETS:
        return target
    return OTHER_TARGETS
