"""Issue #15: API keys bound to what they act for, over real gRPC on real PostgreSQL.

Item 1: a connector key bound to channels acts only on them; on any other
channel (or a channel-less tool approval) every answer is that of a channel or
approval that does not exist. Every decision records the key that carried it.
Item 2: an agent key bound to agent ids speaks only for them, and agent keys
do not see who approves.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from authz_service.client import Client, connect
from authz_service.domain import doctor
from authz_service.domain.model import Role
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Service, Tenant, rpc_error
from .policy_helpers import make_cli

APPROVE = cm.APPROVAL_ACTION_APPROVE
OWNER_TG, OWNER_SL = "100", "T0TEAM:U0OWNER"


async def bound_key(t: Tenant, service: Service, role: int, **binding: list[str]) -> tuple[str, Client]:
    made = await t.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=role, name="bound", **binding))  # type: ignore[arg-type]
    return made.key.key_id, connect(service.address, made.secret)


@pytest.fixture
async def slack_key(tenant: Tenant, service: Service) -> AsyncIterator[tuple[str, Client]]:
    """Two channels, Telegram "tg" and Slack "sl"; a connector key bound to "sl"."""
    await tenant.channel("tg", owner_id=OWNER_TG)
    await tenant.channel("sl", platform=cm.PLATFORM_SLACK, owner_id=OWNER_SL)
    key_id, client = await bound_key(tenant, service, adm.ROLE_CONNECTOR, channels=["sl"])
    yield key_id, client
    await client.close()


async def answer(call: object) -> str:
    """A call's outcome as text, with trace ids dropped."""
    try:
        resp = await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    resp.ClearField("trace_id")
    return f"ok {resp}"


async def test_create_and_list_show_the_binding(tenant: Tenant, service: Service) -> None:
    made = await tenant.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, channels=["b", "a", "b"])
    )
    assert list(made.key.channels) == ["a", "b"]
    listed = {k.key_id: k for k in (await tenant.admin.admin.ListApiKeys(adm.ListApiKeysRequest())).keys}
    assert list(listed[made.key.key_id].channels) == ["a", "b"]
    assert list(listed[tenant.keys["connector"].split(".")[2]].channels) == []  # made unbound
    for request, field in (
        (adm.CreateApiKeyRequest(role=adm.ROLE_APPROVER, channels=["a"]), "channels"),
        (adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, agents=["ops"]), "agents"),
        (adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, channels=["bad channel"]), "channels"),
        (adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, agents=[f"a{i}" for i in range(101)]), "agents"),
    ):
        err = await rpc_error(tenant.admin.admin.CreateApiKey(request))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and (err.details() or "").startswith(field), (
            err.details()
        )


# --- item 1: connector keys -----------------------------------------------------------------


async def test_a_slack_key_on_a_telegram_channel_gets_the_unknown_channel_answer(
    tenant: Tenant, slack_key: tuple[str, Client]
) -> None:
    """The three-call attack: ask to pair a made-up user on another channel, take
    the owner's id and buttons, press "as the owner". Each call answers exactly
    as for a channel that does not exist, and nothing is paired."""
    _, key = slack_key
    made_up = "ch" + secrets.token_hex(4)
    victim = "777000111"
    # A pending request on "tg", made by the tenant's own (unbound) connector.
    pending = await tenant.connector.authz.RequestPairing(
        az.RequestPairingRequest(channel_id="tg", user_id="555")
    )
    button = next(b.callback_payload for b in pending.notification.buttons if b.action == APPROVE)

    def same(real: str, fake: str) -> None:
        assert real.replace("'tg'", "<c>") == fake.replace(f"'{made_up}'", "<c>"), (real, fake)
        assert OWNER_TG not in real and pending.approval_id not in real

    same(
        await answer(key.authz.RequestPairing(az.RequestPairingRequest(channel_id="tg", user_id=victim))),
        await answer(key.authz.RequestPairing(az.RequestPairingRequest(channel_id=made_up, user_id=victim))),
    )
    same(
        await answer(
            key.authz.CheckUser(
                az.CheckUserRequest(channel_id="tg", user_id="555", chat_kind=cm.CHAT_KIND_DIRECT)
            )
        ),
        await answer(
            key.authz.CheckUser(
                az.CheckUserRequest(channel_id=made_up, user_id="555", chat_kind=cm.CHAT_KIND_DIRECT)
            )
        ),
    )
    fake_id = "apr_" + "A" * 22
    resolve = key.authz.ResolveApproval
    same(
        await answer(resolve(az.ResolveApprovalRequest(approval_id=pending.approval_id, action=APPROVE, actor_id=OWNER_TG))),
        await answer(resolve(az.ResolveApprovalRequest(approval_id=fake_id, action=APPROVE, actor_id=OWNER_TG))),
    )  # fmt: skip
    by_button = await answer(resolve(az.ResolveApprovalRequest(callback_payload=button, actor_id=OWNER_TG)))
    assert by_button == "INVALID_ARGUMENT: callback_payload: is not a valid approval button payload"
    same(
        await answer(resolve(az.ResolveApprovalRequest(
            code=az.CodeRef(channel_id="tg", code=pending.code), action=APPROVE, actor_id=OWNER_TG))),
        await answer(resolve(az.ResolveApprovalRequest(
            code=az.CodeRef(channel_id=made_up, code=pending.code), action=APPROVE, actor_id=OWNER_TG))),
    )  # fmt: skip
    invite = await tenant.admin.admin.CreateInvite(adm.CreateInviteRequest(channel_id="tg"))
    same(
        await answer(key.authz.RedeemInvite(az.RedeemInviteRequest(channel_id="tg", user_id=victim, code=invite.code))),
        await answer(key.authz.RedeemInvite(az.RedeemInviteRequest(channel_id=made_up, user_id=victim, code=invite.code))),
    )  # fmt: skip
    sends = [
        az.EvaluateSendRequest(channel_id=c, agent_id="ops", target="telegram:555", origin="telegram:555")
        for c in ("tg", made_up)
    ]
    same(*[await answer(key.authz.EvaluateSend(s)) for s in sends])

    # Nothing happened on "tg": the request is still pending, the victim is not paired.
    got = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=pending.approval_id))
    assert got.status == cm.APPROVAL_STATUS_PENDING
    users = (await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))).users
    assert victim not in {u.user_id for u in users}


async def test_a_bound_key_works_on_its_own_channel(tenant: Tenant, slack_key: tuple[str, Client]) -> None:
    _, key = slack_key
    req = await key.authz.RequestPairing(az.RequestPairingRequest(channel_id="sl", user_id="T0TEAM:U0NEW"))
    assert req.created and req.notification.owner_id == OWNER_SL
    done = await key.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=req.approval_id, action=APPROVE, actor_id=OWNER_SL)
    )
    assert done.approval.status == cm.APPROVAL_STATUS_APPROVED
    check = await key.authz.CheckUser(
        az.CheckUserRequest(channel_id="sl", user_id="T0TEAM:U0NEW", chat_kind=cm.CHAT_KIND_DIRECT)
    )
    assert check.decision == az.DECISION_ALLOW


async def test_tool_approvals_outside_its_channels_do_not_exist_for_a_bound_key(
    tenant: Tenant, service: Service, slack_key: tuple[str, Client]
) -> None:
    _, key = slack_key
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=["telegram:42"]))
    _, agent = await bound_key(tenant, service, adm.ROLE_AGENT, agents=["ops"])
    try:
        for channel in ("", "tg"):
            asked = await agent.authz.RequestApproval(
                az.RequestApprovalRequest(
                    tool_name="shell", arguments_json="{}", agent_id="ops", channel_id=channel
                )
            )
            aid = asked.approval.approval_id
            for call in (
                key.authz.ResolveApproval(
                    az.ResolveApprovalRequest(approval_id=aid, action=APPROVE, actor_id="42")
                ),
                key.authz.RedeemApproval(az.RedeemApprovalRequest(approval_id=aid, tool_name="shell")),
            ):
                err = await rpc_error(call)
                assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
            got = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=aid))
            assert got.status == cm.APPROVAL_STATUS_PENDING
        # It cannot open tool approvals outside its channels either.
        no_channel = az.RequestApprovalRequest(tool_name="shell", arguments_json="{}", agent_id="ops")
        err = await rpc_error(key.authz.RequestApproval(no_channel))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and (err.details() or "").startswith(
            "channel_id"
        )
        no_channel.channel_id = "tg"
        err = await rpc_error(key.authz.RequestApproval(no_channel))
        assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "channel 'tg' not found")
    finally:
        await agent.close()


async def test_a_request_key_of_another_channel_reveals_nothing_to_a_bound_key(
    tenant: Tenant, slack_key: tuple[str, Client]
) -> None:
    """Replaying another channel's request_key with the same call: the answer a
    different call gets, never that approval's id or state."""
    _, sl = slack_key
    ask = az.RequestApprovalRequest(
        tool_name="shell", arguments_json=json.dumps({"cmd": "ls"}), channel_id="tg",
        requester_id=OWNER_TG, request_key="rk-" + secrets.token_hex(6),
    )  # fmt: skip
    made = await tenant.connector.authz.RequestApproval(ask)
    assert made.created
    replay = az.RequestApprovalRequest()
    replay.CopyFrom(ask)
    replay.channel_id, replay.requester_id = "sl", OWNER_SL
    err = await rpc_error(sl.authz.RequestApproval(replay))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert made.approval.approval_id not in (err.details() or "")
    # The unbound key that made it still gets its own request back.
    again = await tenant.connector.authz.RequestApproval(ask)
    assert (again.created, again.approval.approval_id) == (False, made.approval.approval_id)


async def test_every_decision_records_the_key_that_carried_it(
    tenant: Tenant, service: Service, slack_key: tuple[str, Client]
) -> None:
    key_id, key = slack_key
    req = await key.authz.RequestPairing(az.RequestPairingRequest(channel_id="sl", user_id="T0TEAM:U0NEW"))
    await key.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=req.approval_id, action=APPROVE, actor_id=OWNER_SL)
    )
    other = await tenant.connector.authz.RequestPairing(
        az.RequestPairingRequest(channel_id="tg", user_id="9")
    )
    await tenant.approver.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=other.approval_id, action=cm.APPROVAL_ACTION_DENY)
    )
    events = (await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="pairing."))).events
    decided = {
        e.event: json.loads(e.details_json)
        for e in events
        if e.event in ("pairing.approved", "pairing.denied")
    }
    assert decided["pairing.approved"]["key"] == key_id
    assert decided["pairing.denied"]["key"] == tenant.keys["approver"].split(".")[2]

    r = await make_cli(service, tenant)("audit", "--event", "pairing.approved")
    assert r.code == 0, r.text
    header, row = r.out.splitlines()[:2]
    assert header.lower().split()[:5] == ["id", "at", "event", "actor", "key"]
    assert f"slack:{OWNER_SL}" in row and key_id in row


async def test_keys_made_before_binding_keep_working_and_doctor_flags_them(
    tenant: Tenant, service: Service, owner: asyncpg.Connection, slack_key: tuple[str, Client]
) -> None:
    # The fixture's connector key is unbound, as every key made before migration 0012.
    legacy = tenant.keys["connector"].split(".")[2]
    row = await owner.fetchrow(
        "SELECT channels, agents FROM api_keys WHERE tenant_id = $1 AND key_id = $2", tenant.tenant_id, legacy
    )
    assert row is not None and (list(row["channels"]), list(row["agents"])) == ([], [])
    for channel, user in (("tg", "5"), ("sl", "T0TEAM:U0X")):
        assert (
            await tenant.connector.authz.RequestPairing(
                az.RequestPairingRequest(channel_id=channel, user_id=user)
            )
        ).created
    made = await tenant.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_AGENT))
    r = await make_cli(service, tenant)("doctor", "--json", "--fail-on", "never")
    found = {
        (f["code"], f["message"].split()[2]) for f in json.loads(r.out)["findings"] if "key" in f["code"]
    }
    assert found == {("unbound_connector_key", legacy), ("unbound_agent_key", made.key.key_id)}


def test_doctor_flags_quorum_channels_one_holder_can_meet() -> None:
    from datetime import UTC, datetime

    from authz_service.domain.model import Channel, ChannelPolicy, DmPolicy, Platform

    def channel(cid: str, quorum: int) -> Channel:
        policy = ChannelPolicy(
            dm_policy=DmPolicy.PAIRING, owner_id="1", approvers=("2", "3"), required_approvals=quorum
        )
        return Channel("t", cid, Platform.TELEGRAM, policy)

    snap = doctor.Snapshot(
        tenant=doctor.TenantView(), channels=(channel("q", 2), channel("solo", 1)), subjects={},
        group_senders={}, pending=(), now=datetime.now(UTC),
        keys=(doctor.KeyView("k1", Role.CONNECTOR, ("q",)), doctor.KeyView("k2", Role.CONNECTOR, ("solo",))),
    )  # fmt: skip
    quorum = [f for f in doctor.findings(snap) if f.code == doctor.QUORUM_ONE_HOLDER]
    assert [(f.channel_id, f.severity) for f in quorum] == [("q", doctor.Severity.MEDIUM)]
    assert "connector key k1 can" in quorum[0].message and "k2" not in quorum[0].message
    assert not [f for f in doctor.findings(snap) if f.code == doctor.UNBOUND_CONNECTOR_KEY]


# --- item 2: agent keys ---------------------------------------------------------------------


@pytest.fixture
async def two_agents(tenant: Tenant, service: Service) -> AsyncIterator[tuple[Client, Client]]:
    await tenant.channel("tg", owner_id=OWNER_TG, send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW))
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=["telegram:42"]))
    _, a = await bound_key(tenant, service, adm.ROLE_AGENT, agents=["agent-a"])
    _, b = await bound_key(tenant, service, adm.ROLE_AGENT, agents=["agent-b"])
    yield a, b
    await a.close()
    await b.close()


def _ask(agent_id: str, cmd: str = "deploy") -> az.RequestApprovalRequest:
    return az.RequestApprovalRequest(
        tool_name="shell", arguments_json=json.dumps({"cmd": cmd}), agent_id=agent_id
    )


async def test_an_agent_key_cannot_use_another_agents_grant_or_approval(
    tenant: Tenant, two_agents: tuple[Client, Client]
) -> None:
    a, b = two_agents
    first = await a.authz.RequestApproval(_ask("agent-a"))
    always = next(
        x.callback_payload for x in first.notification.buttons if x.action == cm.APPROVAL_ACTION_ALWAYS_ALLOW
    )
    await tenant.connector.authz.ResolveApproval(
        az.ResolveApprovalRequest(callback_payload=always, actor_id="telegram:42")
    )
    granted = await a.authz.RequestApproval(_ask("agent-a"))
    assert granted.approval.status == cm.APPROVAL_STATUS_APPROVED and granted.approval.grant_id

    # B naming A: refused before anything is stored or looked up.
    err = await rpc_error(b.authz.RequestApproval(_ask("agent-a")))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "this key does not act for agent 'agent-a'",
    )
    err = await rpc_error(b.authz.RequestApproval(_ask("")))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    # B redeeming or watching A's approval: as an approval that does not exist.
    aid = granted.approval.approval_id
    err = await rpc_error(b.authz.RedeemApproval(az.RedeemApprovalRequest(
        approval_id=aid, tool_name="shell", arguments_json=json.dumps({"cmd": "deploy"}))))  # fmt: skip
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "no such tool approval")
    watch = b.authz.WatchApproval(az.WatchApprovalRequest(approval_id=aid))
    err = await rpc_error(watch.read())
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "no such tool approval")
    # So A's own redeem still works, once.
    redeemed = await a.authz.RedeemApproval(az.RedeemApprovalRequest(
        approval_id=aid, tool_name="shell", arguments_json=json.dumps({"cmd": "deploy"})))  # fmt: skip
    assert redeemed.allow, redeemed.reason
    # B's own request for the same call asks a person: A's grant is not B's.
    own = await b.authz.RequestApproval(_ask("agent-b"))
    assert own.approval.status == cm.APPROVAL_STATUS_PENDING and not own.approval.grant_id


async def test_an_agent_key_cannot_borrow_another_agents_send_policy(
    tenant: Tenant, two_agents: tuple[Client, Client]
) -> None:
    _, b = two_agents
    req = az.EvaluateSendRequest(
        channel_id="tg", agent_id="agent-a", origin="telegram:5", target="telegram:6"
    )
    err = await rpc_error(b.authz.EvaluateSend(req))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "this key does not act for agent 'agent-a'",
    )
    req.agent_id = "agent-b"
    assert (await b.authz.EvaluateSend(req)).allow


async def test_only_keys_that_deliver_or_decide_see_approver_lists(
    tenant: Tenant, two_agents: tuple[Client, Client]
) -> None:
    a, _ = two_agents
    as_agent = await a.authz.RequestApproval(
        az.RequestApprovalRequest(tool_name="shell", arguments_json="{}", agent_id="agent-a", channel_id="tg")
    )
    assert list(as_agent.approvers) == [] and as_agent.notification.owner_id == ""
    assert as_agent.notification.text and as_agent.notification.buttons
    as_connector = await tenant.connector.authz.RequestApproval(
        az.RequestApprovalRequest(tool_name="shell", arguments_json="{}", agent_id="agent-a", channel_id="tg")
    )
    assert list(as_connector.approvers) == ["telegram:42"] and as_connector.notification.owner_id == OWNER_TG
