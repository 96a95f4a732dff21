"""Subjects (a user's standing on a channel) and group senders."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ..domain.model import Subject, SubjectSource, SubjectStatus
from .db import Connection


@dataclass(frozen=True, slots=True)
class GroupSender:
    channel_id: str
    group_id: str
    user_id: str
    created_at: datetime


def group_sender_from_row(row: asyncpg.Record) -> GroupSender:
    return GroupSender(row["channel_id"], row["group_id"], row["user_id"], row["created_at"])


def subject_from_row(channel_id: str, user_id: str, row: asyncpg.Record) -> Subject:
    return Subject(
        channel_id=channel_id,
        user_id=user_id,
        status=SubjectStatus(row["status"]),
        source=SubjectSource(row["source"]),
        display_name=row["display_name"],
        permissions=tuple(row["permissions"] or ()),
        expires_at=row["expires_at"],
        updated_at=row["updated_at"],
    )


async def get(conn: Connection, tenant_id: str, channel_id: str, user_id: str) -> Subject | None:
    row = await conn.fetchrow(
        "SELECT * FROM subjects WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3 FOR UPDATE",
        tenant_id, channel_id, user_id,
    )  # fmt: skip
    return None if row is None else subject_from_row(channel_id, user_id, row)


@dataclass(frozen=True, slots=True)
class PutSubjectInput:
    """A user's standing on a channel, written whatever was there before
    (``authz_put_subject``, migration 0010). ``ttl_seconds`` 0: no expiry."""

    tenant_id: str
    channel_id: str
    user_id: str
    status: SubjectStatus
    source: SubjectSource
    display_name: str = ""
    permissions: tuple[str, ...] = ()
    ttl_seconds: int = 0


async def put(conn: Connection, subject: PutSubjectInput) -> Subject:
    row = await conn.fetchrow(
        "SELECT * FROM authz_put_subject($1, $2, $3, $4, $5, $6, $7, $8)",
        subject.tenant_id, subject.channel_id, subject.user_id, subject.status.value, subject.source.value, subject.display_name,
        list(subject.permissions), subject.ttl_seconds,
    )  # fmt: skip
    assert row is not None
    return subject_from_row(subject.channel_id, subject.user_id, row)


async def delete(
    conn: Connection,
    tenant_id: str,
    channel_id: str,
    user_id: str,
    *,
    status: SubjectStatus,
    source: SubjectSource | None,
) -> bool:
    result = await conn.execute(
        """DELETE FROM subjects WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3
             AND status = $4 AND ($5::text IS NULL OR source = $5)""",
        tenant_id, channel_id, user_id, status.value, None if source is None else source.value,
    )  # fmt: skip
    return bool(result != "DELETE 0")


@dataclass(frozen=True, slots=True)
class SubjectPage:
    """One page of a channel's users, by user id."""

    tenant_id: str
    channel_id: str
    status: SubjectStatus | None = None
    source: SubjectSource | None = None
    after: str = ""
    """The last user id of the previous page; empty: from the start."""
    limit: int | None = None
    """None: every user."""
    query: str = ""
    """A user id prefix or a part of the display name (case-insensitive)."""


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def list_for_channel(conn: Connection, page: SubjectPage) -> list[Subject]:
    status, source = page.status, page.source
    rows = await conn.fetch(
        """SELECT * FROM subjects WHERE tenant_id = $1 AND channel_id = $2
             AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR source = $4)
             AND user_id > $5
             AND ($6 = '' OR user_id LIKE $7 || '%' OR display_name ILIKE '%' || $7 || '%')
           ORDER BY user_id LIMIT $8""",
        page.tenant_id, page.channel_id, None if status is None else status.value,
        None if source is None else source.value, page.after, page.query, _like(page.query), page.limit,
    )  # fmt: skip
    return [subject_from_row(page.channel_id, r["user_id"], r) for r in rows]


async def add_group_sender(
    conn: Connection, tenant_id: str, channel_id: str, group_id: str, user_id: str
) -> GroupSender:
    row = await conn.fetchrow(
        """INSERT INTO group_senders (tenant_id, channel_id, group_id, user_id) VALUES ($1, $2, $3, $4)
           ON CONFLICT (tenant_id, channel_id, group_id, user_id) DO UPDATE SET user_id = EXCLUDED.user_id
           RETURNING *""",
        tenant_id, channel_id, group_id, user_id,
    )  # fmt: skip
    assert row is not None
    return group_sender_from_row(row)


async def remove_group_sender(
    conn: Connection, tenant_id: str, channel_id: str, group_id: str, user_id: str
) -> bool:
    result = await conn.execute(
        "DELETE FROM group_senders WHERE tenant_id = $1 AND channel_id = $2 AND group_id = $3 AND user_id = $4",
        tenant_id, channel_id, group_id, user_id,
    )  # fmt: skip
    return bool(result != "DELETE 0")


async def list_group_senders(
    conn: Connection, tenant_id: str, channel_id: str, group_id: str
) -> list[GroupSender]:
    rows = await conn.fetch(
        """SELECT * FROM group_senders WHERE tenant_id = $1 AND channel_id = $2 AND ($3 = '' OR group_id = $3)
           ORDER BY group_id, user_id""",
        tenant_id, channel_id, group_id,
    )  # fmt: skip
    return [group_sender_from_row(r) for r in rows]
