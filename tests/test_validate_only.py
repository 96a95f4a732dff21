"""`validate_only` on SetChannel and SetTenantSettings: the same checks and
normalisation as a write, nothing stored or audited (what `authz apply
--dry-run` asks)."""

from __future__ import annotations

import grpc
import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Tenant, rpc_error
from .policy_helpers import last_event_id


def _policy() -> cm.ChannelPolicy:
    return cm.ChannelPolicy(
        dm_policy=cm.DM_POLICY_ALLOWLIST,
        approvers=["42", "42", "7"],
        groups={"g1": cm.GroupRule(allowed_commands=["Status", "status", "help"])},
    )


async def test_validate_only_channel_returns_what_a_write_stores_and_writes_nothing(tenant: Tenant) -> None:
    before = await last_event_id(tenant)
    req = adm.SetChannelRequest(
        channel_id="c1", platform=cm.PLATFORM_TELEGRAM, policy=_policy(), validate_only=True
    )
    checked = await tenant.admin.admin.SetChannel(req)
    assert await last_event_id(tenant) == before
    assert not (await tenant.admin.admin.ListChannels(adm.ListChannelsRequest())).channels

    req.validate_only = False
    stored = await tenant.admin.admin.SetChannel(req)
    assert (checked.channel_id, checked.platform) == (stored.channel_id, stored.platform)
    assert checked.policy == stored.policy
    assert list(checked.policy.groups["g1"].allowed_commands) == ["status", "help"]
    assert checked.policy.max_pending == 20  # defaults filled in


@pytest.mark.parametrize(
    ("policy", "details"),
    [
        (cm.ChannelPolicy(approvers=["42", "@bob"]), "policy.approvers[1]: must be a Telegram numeric user id"),
        (cm.ChannelPolicy(groups={"g1": cm.GroupRule(allowed_commands=["ok", "fine", "rm -rf"])}),
         "policy.groups[g1].allowed_commands[2]: 'rm -rf' must be a command name"),
        (cm.ChannelPolicy(mention_patterns=["bot", "(?=x)"]), "policy.mention_patterns[1]: '(?=x)' is not a valid RE2"),
        (cm.ChannelPolicy(send_policy=cm.SendPolicy(deny=["ok", " spaced"])), "policy.send_policy.deny[1]: entries"),
        (cm.ChannelPolicy(aliases={"origin": "slack:#x"}), "policy.aliases[origin]: 'origin' is reserved"),
    ],
)  # fmt: skip
async def test_validate_only_names_the_entry(tenant: Tenant, policy: cm.ChannelPolicy, details: str) -> None:
    for validate_only in (True, False):  # the same answer as a write
        req = adm.SetChannelRequest(
            channel_id="c1", platform=cm.PLATFORM_TELEGRAM, policy=policy, validate_only=validate_only
        )
        err = await rpc_error(tenant.admin.admin.SetChannel(req))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.details() or "").startswith(details), err.details()


async def test_validate_only_settings(tenant: Tenant) -> None:
    before = await last_event_id(tenant)
    checked = await tenant.admin.admin.SetTenantSettings(
        adm.TenantSettings(
            approvers=["telegram:9", "telegram:1", "telegram:9"],
            agent_approvers={"ops": adm.ActorList(actors=["slack:T0123ABC:U0456DEF"])},
            timezone="Europe/Berlin",
            validate_only=True,
        )
    )
    assert (list(checked.approvers), checked.timezone) == (["telegram:1", "telegram:9"], "Europe/Berlin")
    assert list(checked.agent_approvers["ops"].actors) == ["slack:T0123ABC:U0456DEF"]
    stored = await tenant.admin.admin.GetTenantSettings(adm.GetTenantSettingsRequest())
    assert (list(stored.approvers), stored.timezone) == ([], "UTC")
    assert await last_event_id(tenant) == before

    err = await rpc_error(tenant.admin.admin.SetTenantSettings(
        adm.TenantSettings(agent_approvers={"ops": adm.ActorList(actors=["telegram:1", "42"])}, validate_only=True)
    ))  # fmt: skip
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith("agent_approvers[ops][1]: '42' must be"), err.details()
