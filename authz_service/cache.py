"""The hot path's in-process cache: channel policies, subject states, group
sender entries and API keys, per process.

Correctness rules (DESIGN §6):

* Every committed change to those tables is announced on ``authz_changes``
  (migration 0004) to every replica, and the entry is dropped at once.
* The cache serves only while the listening connection is up. When it drops,
  everything is cleared and every lookup goes to the database until the
  listener is back (fail closed, never stale-open).
* A fill races with an invalidation: a read that started before a change
  could store the old state after the change was announced. Each fill is
  therefore tagged with the generation it started in and is dropped if any
  change arrived meanwhile.
* Expiry is judged by the database clock: the offset between the database's
  ``now()`` and the local clock is measured on every read and applied to
  cached decisions.
* The cache is bounded: past ``max_entries`` it is cleared (cheap, and a cold
  read is one round trip).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .domain.model import Channel, Role, Subject

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    secret_hash: bytes
    role: Role
    revoked: bool


@dataclass(frozen=True, slots=True)
class CheckState:
    """What CheckUser needs about one (channel, user, group)."""

    channel: Channel | None  # None: the channel is not configured
    subject: Subject | None
    in_group: bool


class StateCache:
    def __init__(self, max_entries: int = 500_000) -> None:
        self.max_entries = max_entries
        self.usable = False
        self.generation = 0
        self.hits = 0
        self.misses = 0
        self._channels: dict[tuple[str, str], Channel | None] = {}
        self._subjects: dict[tuple[str, str, str], Subject | None] = {}
        self._groups: dict[tuple[str, str, str], dict[str, bool]] = {}
        self._keys: dict[tuple[str, str], KeyRecord | None] = {}
        self._clock_offset = timedelta(0)

    # --- invalidation ---------------------------------------------------------

    def on_listener(self, connected: bool) -> None:
        """Serve only while connected; both transitions start from empty."""
        self.clear()
        self.usable = connected
        log.info("state cache %s", "on" if connected else "off (listener down): reading the database")

    def clear(self) -> None:
        self.generation += 1
        self._channels.clear()
        self._subjects.clear()
        self._groups.clear()
        self._keys.clear()

    def on_change(self, payload: str) -> None:
        self.generation += 1
        table, _, rest = payload.partition(" ")
        parts = rest.split(" ")
        if table == "channels" and len(parts) == 2:
            self._channels.pop((parts[0], parts[1]), None)
        elif table == "subjects" and len(parts) == 3:
            self._subjects.pop((parts[0], parts[1], parts[2]), None)
        elif table == "group_senders" and len(parts) == 3:
            self._groups.pop((parts[0], parts[1], parts[2]), None)
        elif table == "api_keys" and len(parts) == 2:
            self._keys.pop((parts[0], parts[1]), None)
        else:  # unknown shape: be safe
            log.warning("unknown change notification %r; clearing the cache", payload[:200])
            self.clear()

    # --- the database clock -----------------------------------------------------

    def observe_db_clock(self, db_now: datetime) -> None:
        self._clock_offset = db_now - datetime.now(UTC)

    def db_now(self) -> datetime:
        return datetime.now(UTC) + self._clock_offset

    # --- CheckUser state ----------------------------------------------------------

    def check_state(self, tenant_id: str, channel_id: str, user_id: str, group_id: str) -> CheckState | None:
        if not self.usable:
            return None
        ck = (tenant_id, channel_id)
        sk = (tenant_id, channel_id, user_id)
        if ck not in self._channels or sk not in self._subjects:
            self.misses += 1
            return None
        in_group = False
        if group_id:
            groups = self._groups.get(sk)
            if groups is None or group_id not in groups:
                self.misses += 1
                return None
            in_group = groups[group_id]
        self.hits += 1
        return CheckState(self._channels[ck], self._subjects[sk], in_group)

    def fill_check_state(
        self, generation: int, tenant_id: str, channel_id: str, user_id: str, group_id: str, state: CheckState
    ) -> None:
        if not self._may_fill(generation):
            return
        self._channels[(tenant_id, channel_id)] = state.channel
        self._subjects[(tenant_id, channel_id, user_id)] = state.subject
        if group_id:
            self._groups.setdefault((tenant_id, channel_id, user_id), {})[group_id] = state.in_group

    # --- API keys -------------------------------------------------------------------

    def key(self, tenant_id: str, key_id: str) -> tuple[bool, KeyRecord | None]:
        """(found in cache, record); a cached None means "no such key"."""
        if not self.usable or (tenant_id, key_id) not in self._keys:
            return False, None
        return True, self._keys[(tenant_id, key_id)]

    def fill_key(self, generation: int, tenant_id: str, key_id: str, record: KeyRecord | None) -> None:
        if self._may_fill(generation):
            self._keys[(tenant_id, key_id)] = record

    def _may_fill(self, generation: int) -> bool:
        if not self.usable or generation != self.generation:
            return False
        if self._size() >= self.max_entries:
            self.clear()
            return False
        return True

    def _size(self) -> int:
        return len(self._channels) + len(self._subjects) + len(self._groups) + len(self._keys)

    def stats(self) -> dict[str, Any]:
        return {"usable": self.usable, "entries": self._size(), "hits": self.hits, "misses": self.misses}
