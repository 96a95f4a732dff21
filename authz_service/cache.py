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
* Read your own writes: a NOTIFY reaches this process asynchronously, so an
  RPC that changed a tenant's state also forgets that tenant's entries here
  (``forget_tenant``, O(1): entries carry their tenant's generation) before
  it answers. The next call on this process reads the database; other
  processes catch up through NOTIFY. API key records have a generation of
  their own, bumped only by the RPCs that create or revoke keys, so a
  tenant's pairing traffic does not make every call re-read its key.
* The cache is bounded: past ``max_entries`` it is cleared (cheap, and a cold
  read is one round trip).
* "No such API key" is remembered apart, in a small LRU of its own
  (``max_unknown_keys``): a flood of made-up key ids evicts only other
  made-up key ids, never a real entry, and never clears the cache.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .domain.model import Channel, Role, Subject

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    secret_hash: bytes
    role: Role
    revoked: bool
    channels: frozenset[str] = frozenset()
    agents: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class CheckState:
    """What CheckUser needs about one (channel, user, group)."""

    channel: Channel | None  # None: the channel is not configured
    subject: Subject | None
    in_group: bool


class StateCache:
    def __init__(self, max_entries: int = 500_000, max_unknown_keys: int = 10_000) -> None:
        self.max_entries = max_entries
        self.max_unknown_keys = max_unknown_keys
        self.usable = False
        self.generation = 0
        self.hits = 0
        self.misses = 0
        # Every entry is stored with its tenant's generation at fill time.
        self._channels: dict[tuple[str, str], tuple[int, Channel | None]] = {}
        self._subjects: dict[tuple[str, str, str], tuple[int, Subject | None]] = {}
        self._groups: dict[tuple[str, str, str], tuple[int, dict[str, bool]]] = {}
        self._keys: dict[tuple[str, str], tuple[int, KeyRecord]] = {}
        # Unknown key ids, with their tenant's key generation at fill time.
        self._unknown_keys: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._tenant_generation: dict[str, int] = {}
        # Keys change only through the key RPCs: a write to a tenant's policies
        # or users leaves its cached keys alone (they have their own generation).
        self._key_generation: dict[str, int] = {}
        self._clock_offset = timedelta(0)

    # --- invalidation ---------------------------------------------------------

    def on_listener(self, connected: bool) -> None:
        """Serve only while connected; both transitions start from empty."""
        self.clear()
        self.usable = connected
        log.info("state cache %s", "on" if connected else "off (listener down): reading the database")

    def forget_tenant(self, tenant_id: str, *, keys: bool = False) -> None:
        """Invalidate every state entry of one tenant at once (and any fill in
        flight); with ``keys``, its API key records too."""
        self.generation += 1
        self._tenant_generation[tenant_id] = self._tenant_generation.get(tenant_id, 0) + 1
        if keys:
            self._key_generation[tenant_id] = self._key_generation.get(tenant_id, 0) + 1

    def clear(self) -> None:
        self.generation += 1
        self._tenant_generation.clear()
        self._key_generation.clear()
        self._channels.clear()
        self._subjects.clear()
        self._groups.clear()
        self._keys.clear()
        self._unknown_keys.clear()

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
            self._unknown_keys.pop((parts[0], parts[1]), None)
        elif table == "tenants" and len(parts) == 1:  # its time zone: cached on every channel
            self.forget_tenant(parts[0])
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
        tgen = self._tenant_generation.get(tenant_id, 0)
        channel = self._channels.get((tenant_id, channel_id))
        subject = self._subjects.get((tenant_id, channel_id, user_id))
        if channel is None or subject is None or channel[0] != tgen or subject[0] != tgen:
            self.misses += 1
            return None
        in_group = False
        if group_id:
            groups = self._groups.get((tenant_id, channel_id, user_id))
            if groups is None or groups[0] != tgen or group_id not in groups[1]:
                self.misses += 1
                return None
            in_group = groups[1][group_id]
        self.hits += 1
        return CheckState(channel[1], subject[1], in_group)

    def fill_check_state(
        self, generation: int, tenant_id: str, channel_id: str, user_id: str, group_id: str, state: CheckState
    ) -> None:
        if not self._may_fill(generation):
            return
        tgen = self._tenant_generation.get(tenant_id, 0)
        self._channels[(tenant_id, channel_id)] = (tgen, state.channel)
        self._subjects[(tenant_id, channel_id, user_id)] = (tgen, state.subject)
        if group_id:
            key = (tenant_id, channel_id, user_id)
            groups = self._groups.get(key)
            if groups is None or groups[0] != tgen:
                groups = (tgen, {})
                self._groups[key] = groups
            groups[1][group_id] = state.in_group

    def channel(self, tenant_id: str, channel_id: str) -> tuple[bool, Channel | None]:
        """(found in cache, channel); a cached None means "not configured"."""
        entry = self._channels.get((tenant_id, channel_id)) if self.usable else None
        if entry is None or entry[0] != self._tenant_generation.get(tenant_id, 0):
            self.misses += 1
            return False, None
        self.hits += 1
        return True, entry[1]

    def fill_channel(self, generation: int, tenant_id: str, channel_id: str, channel: Channel | None) -> None:
        if self._may_fill(generation):
            self._channels[(tenant_id, channel_id)] = (self._tenant_generation.get(tenant_id, 0), channel)

    # --- API keys -------------------------------------------------------------------

    def key(self, tenant_id: str, key_id: str) -> tuple[bool, KeyRecord | None]:
        """(found in cache, record); a cached None means "no such key"."""
        if not self.usable:
            return False, None
        kgen = self._key_generation.get(tenant_id, 0)
        entry = self._keys.get((tenant_id, key_id))
        if entry is not None and entry[0] == kgen:
            return True, entry[1]
        unknown = self._unknown_keys.get((tenant_id, key_id))
        if unknown is not None and unknown == kgen:
            self._unknown_keys.move_to_end((tenant_id, key_id))
            return True, None
        return False, None

    def fill_key(self, generation: int, tenant_id: str, key_id: str, record: KeyRecord | None) -> None:
        kgen = self._key_generation.get(tenant_id, 0)
        if record is None:
            if self.usable and generation == self.generation:
                self._unknown_keys[(tenant_id, key_id)] = kgen
                self._unknown_keys.move_to_end((tenant_id, key_id))
                if len(self._unknown_keys) > self.max_unknown_keys:
                    self._unknown_keys.popitem(last=False)
        elif self._may_fill(generation):
            self._keys[(tenant_id, key_id)] = (kgen, record)

    def _may_fill(self, generation: int) -> bool:
        if not self.usable or generation != self.generation:
            return False
        if self._size() >= self.max_entries:
            self.clear()
            return False
        return True

    @property
    def entries(self) -> int:
        """Cached entries (for the telemetry gauge)."""
        return self._size()

    def _size(self) -> int:
        return len(self._channels) + len(self._subjects) + len(self._groups) + len(self._keys)
