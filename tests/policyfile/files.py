"""Policy files and the tenant they are applied to, shared by the ``authz apply -f`` and
``authz export`` tests (the ``cli`` fixture, writing a file, reading a channel back).
"""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from tests.conftest import Service, Tenant
from tests.policy_helpers import Cli, make_cli


@pytest.fixture
def cli(service: Service, tenant: Tenant) -> Cli:
    return make_cli(service, tenant)


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(dedent(text).lstrip())
    return path


async def channel_ids(t: Tenant) -> list[str]:
    return sorted(
        c.channel_id for c in (await t.admin.admin.ListChannels(adm.ListChannelsRequest())).channels
    )


async def get(t: Tenant, channel_id: str) -> adm.Channel:
    return await t.admin.admin.GetChannel(adm.GetChannelRequest(channel_id=channel_id))


async def senders(t: Tenant, channel_id: str) -> set[tuple[str, str]]:
    resp = await t.admin.admin.ListGroupSenders(adm.ListGroupSendersRequest(channel_id=channel_id))
    return {(s.group_id, s.user_id) for s in resp.senders}


SUPPORT = """
    version: 1
    channels:
      - id: support-tg
        platform: telegram
        policy:
          dm_policy: pairing
          owner_id: "100"
          groups: {"*": {require_mention: true, allowed_commands: [/Help, status]}}
          bindings: [{user_id: "42", agent_id: admin, tools: {allowed: ["*"]}}]
          send_policy: {default: deny, allow: [origin, ops-alerts]}
          rate_limit: {max_messages_per_hour: 60}
        group_senders:
          - {group_id: "-1001234", user_id: "42"}
"""
