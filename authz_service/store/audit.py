"""The audit trail: one row per event, written in the transaction of the
change it records; and the rewrites a user's data rights allow (migration
0003's trigger permits only those, and only with ``enable_anonymization``)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg

from ..domain.errors import Unavailable
from .db import Connection, Database, row_count

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One event as stored; ``details_json`` is its JSON object as text."""

    event_id: int
    at: datetime
    event: str
    actor: str
    channel_id: str
    subject: str
    approval_id: str
    trace_id: str
    details_json: str


def _event(row: asyncpg.Record) -> AuditEvent:
    details = row["details"]
    return AuditEvent(
        row["event_id"], row["at"], row["event"], row["actor"], row["channel_id"], row["subject"],
        row["approval_id"], row["trace_id"], details if isinstance(details, str) else json.dumps(details),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """QueryAudit's filters: '' (or None) matches anything; an ``event`` ending
    in ``.`` is a prefix."""

    since: datetime | None = None
    until: datetime | None = None
    channel_id: str = ""
    user_id: str = ""
    event: str = ""
    after_event_id: int = 0
    limit: int = 100


@dataclass(frozen=True, slots=True)
class UserScope:
    """One user's events on one channel: those on the channel whose subject is
    the user, whose actor is ``actor`` ("<platform>:<user id>") or whose
    details name them as a tool call's requester; those without a channel that
    they acted in (e.g. a tenant approver deciding a channel-less tool call);
    and those about one of ``approval_ids``, their approvals."""

    tenant_id: str
    channel_id: str
    user_id: str
    actor: str
    approval_ids: tuple[str, ...]

    def args(self) -> tuple[object, ...]:
        return self.tenant_id, self.channel_id, self.user_id, self.actor, list(self.approval_ids)


async def record(
    conn: Connection,
    tenant_id: str,
    event: str,
    *,
    actor: str = "",
    channel_id: str = "",
    subject: str = "",
    approval_id: str = "",
    trace_id: str = "",
    details: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO audit_events
               (tenant_id, event, actor, channel_id, subject, approval_id, trace_id, details)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)""",
        tenant_id, event, actor, channel_id, subject, approval_id, trace_id, json.dumps(details or {}),
    )  # fmt: skip


async def query(conn: Connection, tenant_id: str, q: AuditQuery) -> list[AuditEvent]:
    rows = await conn.fetch(
        """SELECT * FROM audit_events
           WHERE tenant_id = $1 AND event_id > $2
             AND ($3::timestamptz IS NULL OR at >= $3)
             AND ($4::timestamptz IS NULL OR at < $4)
             AND ($5 = '' OR channel_id = $5)
             AND ($6 = '' OR subject = $6)
             AND ($7 = '' OR (CASE WHEN $8 THEN starts_with(event, $7) ELSE event = $7 END))
           ORDER BY event_id LIMIT $9""",
        tenant_id, q.after_event_id, q.since, q.until, q.channel_id, q.user_id, q.event, q.event.endswith("."),
        q.limit,
    )  # fmt: skip
    return [_event(r) for r in rows]


# Details that may name or describe a person: removed when a user is purged or anonymised.
# ("arguments": events written before the audit kept only an excerpt.)
PERSONAL_DETAILS = ["display_name", "first_message", "arguments", "arguments_excerpt", "reason"]


_USER_EVENTS = """tenant_id = $1 AND (
        (channel_id = $2 AND (subject = $3 OR actor = $4 OR details ->> 'requester_id' = $3))
        OR (channel_id = '' AND actor = $4)
        OR (approval_id <> '' AND approval_id = ANY($5::text[])))"""


async def user_events(conn: Connection, user: UserScope) -> list[AuditEvent]:
    rows = await conn.fetch(
        f"SELECT * FROM audit_events WHERE {_USER_EVENTS} ORDER BY event_id", *user.args()
    )
    return [_event(r) for r in rows]


async def enable_anonymization(conn: Connection) -> None:
    """Let this transaction (only) rewrite audit events as the trigger allows:
    actor and subject to a pseudonym, personal details removed."""
    await conn.execute("SELECT set_config('authz.anonymize', 'on', true)")


# Details whose value is a list of voters (``approved_by``, ``dropped``): one naming
# the user is removed, since the trigger allows no rewrite inside a list; each
# vote stays on record as its own event, whose actor is pseudonymised.
VOTER_LISTS = ["approved_by", "dropped"]
# Details composed around an id (a target ``telegram:555``, a session
# ``agent:main:telegram:dm:555``, a reason quoting the target): replaced whole by the
# pseudonym when they hold the user id as a token (the trigger allows no partial
# rewrite), by the same rule (``domain.ids.token_pattern``) as store/users.py.
TOKEN_DETAILS = ["session_id", "target", "origin", "reason"]


async def pseudonymize(conn: Connection, user: UserScope, pseudonym: str, session_pattern: str) -> int:
    """Replace the user's id by ``pseudonym`` and drop personal details in their
    audit events; and, in every event of the channel or without one, replace
    each field that still names them: an actor or a detail equal to
    ``<platform>:<user id>`` (or, on the channel, to the user id), a subject on
    the channel or a session id, target or origin (``TOKEN_DETAILS``) matching
    ``session_pattern`` (the id as a token of it). A voter list naming
    them is removed (``VOTER_LISTS``). Returns the number of rows changed."""
    named = """jsonb_typeof(d.v) = 'string' AND (d.v #>> '{}' = $4 OR (s.channel_id = $2 AND d.v #>> '{}' = $3)
                   OR (d.k = ANY($10::text[]) AND d.v #>> '{}' ~ $8))"""
    voters = """d.k = ANY($9::text[]) AND jsonb_typeof(d.v) = 'array'
                   AND (d.v ? $4 OR (s.channel_id = $2 AND d.v ? $3))"""
    status = await conn.execute(
        f"""UPDATE audit_events e SET actor = n.actor, subject = n.subject, details = n.details
            FROM (
                SELECT s.event_id,
                       CASE WHEN s.actor = $4 THEN $6 ELSE s.actor END AS actor,
                       CASE WHEN s.channel_id = $2 AND (s.subject = $3 OR s.subject ~ $8) THEN $6
                            ELSE s.subject END AS subject,
                       (SELECT coalesce(jsonb_object_agg(d.k, CASE WHEN {named} THEN to_jsonb($6::text)
                                                                   ELSE d.v END), '{{}}'::jsonb)
                          FROM jsonb_each(CASE WHEN s.mine THEN s.details - $7::text[] ELSE s.details END)
                               AS d(k, v)
                         WHERE NOT ({voters})) AS details
                FROM (SELECT event_id, actor, subject, channel_id, details, ({_USER_EVENTS}) AS mine
                      FROM audit_events
                      WHERE tenant_id = $1 AND (channel_id IN ($2, '') OR ({_USER_EVENTS}))) s
            ) n
            WHERE e.tenant_id = $1 AND e.event_id = n.event_id
              AND (e.actor, e.subject, e.details) IS DISTINCT FROM (n.actor, n.subject, n.details)""",
        *user.args(), pseudonym, PERSONAL_DETAILS, session_pattern, VOTER_LISTS, TOKEN_DETAILS,
    )  # fmt: skip
    return row_count(status)


async def scrub_details(conn: Connection, user: UserScope) -> int:
    """Drop personal details from the user's audit events; actor and subject stay."""
    status = await conn.execute(
        f"""UPDATE audit_events SET details = details - $6::text[]
            WHERE {_USER_EVENTS} AND details ?| $6::text[]""",
        *user.args(), PERSONAL_DETAILS,
    )  # fmt: skip
    return row_count(status)


@dataclass(frozen=True, slots=True)
class PrunedPartition:
    partition: str
    range_from: datetime
    range_to: datetime
    events: int


async def ensure_partitions(conn: Connection, months_ahead: int = 3) -> int:
    """Create the audit's monthly partitions up to ``months_ahead`` months
    ahead (migration 0014); returns how many were made."""
    return int(await conn.fetchval("SELECT authz_audit_partitions($1)", months_ahead))


async def prepare_partitions(db: Database) -> bool:
    """At start-up: this month's partition and the next three. Failing here
    loses nothing (rows outside them land in the default partition), so it is
    logged, not raised: e.g. a schema behind this build, which readiness reports."""
    try:
        async with db.operator() as conn:
            await ensure_partitions(conn)
    except (asyncpg.PostgresError, Unavailable) as exc:
        log.warning("could not create audit partitions: %s", exc)
        return False
    return True


async def prune(conn: Connection, before: date) -> list[PrunedPartition]:
    """Drop the whole monthly partitions that end on or before ``before``
    (never the current month's), auditing each tenant that had events there.
    The only removal of audit events there is: by month, never by row."""
    await ensure_partitions(conn)
    rows = await conn.fetch("SELECT * FROM authz_audit_prune($1)", before)
    return [PrunedPartition(r["partition_name"], r["range_from"], r["range_to"], r["events"]) for r in rows]
