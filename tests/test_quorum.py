"""Quorum for pairing approvals (issue #5, pairing lifecycle).

A channel's ``required_approvals`` (captured on each request when it is
created) asks for that many *distinct* approvers: a vote is stored on the
approval row, a repeat vote changes nothing, and a single DENY or BLOCK ends
the request. Votes live in PostgreSQL, so two service processes share them
and a restart forgets none.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from authz_service.client import Client, connect
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Dsns, Service, Tenant, rpc_error
from .pairing_helpers import OWNER, button, check, events, pair, press
from .replicas import Replica, two_replicas

APPROVE, DENY, BLOCK = cm.APPROVAL_ACTION_APPROVE, cm.APPROVAL_ACTION_DENY, cm.APPROVAL_ACTION_BLOCK
SECOND, THIRD = "200", "300"


async def quorum_channel(t: Tenant, required: int, approvers: tuple[str, ...] = (SECOND, THIRD)) -> None:
    await t.channel(owner_id=OWNER, approvers=list(approvers), required_approvals=required)


async def approval(t: Tenant, approval_id: str) -> cm.Approval:
    return await t.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=approval_id))


async def test_two_distinct_approvers_are_needed(tenant: Tenant) -> None:
    await quorum_channel(tenant, 2)
    req = await pair(tenant)
    assert req.created and req.notification.owner_id == OWNER
    payload = button(req, APPROVE)

    first = await press(tenant, payload, OWNER)
    assert first.approval.status == cm.APPROVAL_STATUS_PENDING
    assert first.approval.required_approvals == 2
    assert list(first.approval.approved_by) == [f"telegram:{OWNER}"]
    assert first.owner_text == f"👍 1 of 2 approvals (by telegram:{OWNER})"
    assert first.requester_text == ""
    assert (await check(tenant, consistent=True)).decision == az.DECISION_PAIRING_REQUIRED
    listed = (await tenant.approver.admin.ListApprovals(adm.ListApprovalsRequest(channel_id="tg"))).approvals
    assert [(a.approval_id, list(a.approved_by)) for a in listed] == [
        (req.approval_id, [f"telegram:{OWNER}"])
    ]

    final = await press(tenant, payload, SECOND)
    assert final.approval.status == cm.APPROVAL_STATUS_APPROVED
    assert list(final.approval.approved_by) == [f"telegram:{OWNER}", f"telegram:{SECOND}"]
    assert final.approval.resolved_by == f"telegram:{SECOND}"
    assert final.requester_text == "✅ Paired! You can chat now."
    assert final.owner_text == f"✅ Approved by telegram:{SECOND} (2 of 2 approvals)"
    assert (await check(tenant)).decision == az.DECISION_ALLOW

    trail = await events(tenant, "pairing.")
    assert [(e.event, e.actor) for e in trail] == [
        ("pairing.requested", "telegram:42"),
        ("pairing.vote", f"telegram:{OWNER}"),
        ("pairing.approved", f"telegram:{SECOND}"),
    ]
    # Too late for a third approver.
    late = await rpc_error(press(tenant, payload, THIRD))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_same_approver_twice_counts_once(tenant: Tenant) -> None:
    await quorum_channel(tenant, 2)
    req = await pair(tenant)
    answers = [await press(tenant, button(req, APPROVE), OWNER) for _ in range(3)]
    assert all(a.approval.status == cm.APPROVAL_STATUS_PENDING for a in answers)
    assert {a.owner_text for a in answers} == {f"👍 1 of 2 approvals (by telegram:{OWNER})"}
    assert {tuple(a.approval.approved_by) for a in answers} == {(f"telegram:{OWNER}",)}
    assert (await approval(tenant, req.approval_id)).status == cm.APPROVAL_STATUS_PENDING
    assert (await check(tenant, consistent=True)).decision == az.DECISION_PAIRING_REQUIRED
    # An approver key is another actor: its approval completes the quorum.
    request = az.ResolveApprovalRequest(approval_id=req.approval_id, action=APPROVE)
    by_key = await tenant.approver.authz.ResolveApproval(request)
    assert by_key.approval.status == cm.APPROVAL_STATUS_APPROVED
    assert len(by_key.approval.approved_by) == 2 and by_key.approval.approved_by[1].startswith("key:")
    # After the decision a repeat is refused like any late resolve.
    late = await rpc_error(tenant.approver.authz.ResolveApproval(request))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION
    votes = await events(tenant, "pairing.vote")
    assert len(votes) == 1 and votes[0].actor == f"telegram:{OWNER}"
    assert len(await events(tenant, "pairing.approved")) == 1


@pytest.mark.parametrize(
    ("action", "status", "decision"),
    [
        (DENY, cm.APPROVAL_STATUS_DENIED, az.DECISION_PAIRING_REQUIRED),
        (BLOCK, cm.APPROVAL_STATUS_BLOCKED, az.DECISION_BLOCKED),
    ],
    ids=["deny", "block"],
)
async def test_one_deny_or_block_ends_it(tenant: Tenant, action: int, status: int, decision: int) -> None:
    await quorum_channel(tenant, 3)
    req = await pair(tenant)
    await press(tenant, button(req, APPROVE), OWNER)
    ended = await press(tenant, button(req, action), SECOND)
    assert ended.approval.status == status
    assert list(ended.approval.approved_by) == [f"telegram:{OWNER}"]  # the vote is kept, not counted
    err = await rpc_error(press(tenant, button(req, APPROVE), THIRD))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await check(tenant, consistent=True)).decision == decision


async def _remove_approver(t: Tenant) -> None:
    await quorum_channel(t, 2, (THIRD,))  # SECOND is no longer a channel approver


async def _revoke_key(t: Tenant, key_id: str) -> None:
    await t.admin.admin.RevokeApiKey(adm.RevokeApiKeyRequest(key_id=key_id))


async def _drop_tenant_approver(t: Tenant) -> None:
    await t.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[]))


@pytest.mark.parametrize(
    ("voter", "withdraw"),
    [
        ("channel approver", lambda t, _key: _remove_approver(t)),
        ("tenant approver", lambda t, _key: _drop_tenant_approver(t)),
        ("approver key", _revoke_key),
    ],
    ids=["channel-approver-removed", "tenant-approver-removed", "key-revoked"],
)
async def test_deciding_vote_drops_votes_that_no_longer_qualify(
    tenant: Tenant, service: Service, voter: str, withdraw: Callable[[Tenant, str], Awaitable[None]]
) -> None:
    """An earlier vote counts only while its voter may still resolve: the vote
    that would reach the quorum checks them again against the channel's current
    approvers and keys. Dropped votes leave the request pending."""
    await quorum_channel(tenant, 2)
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=["telegram:400"]))
    req = await pair(tenant)
    payload = button(req, APPROVE)
    made = await tenant.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_APPROVER, name="second")
    )
    key_id = made.key.key_id
    if voter == "approver key":
        async with connect(service.address, made.secret) as second:
            request = az.ResolveApprovalRequest(approval_id=req.approval_id, action=APPROVE)
            first = await second.authz.ResolveApproval(request)
        early = f"key:{key_id}"
    else:
        early = f"telegram:{SECOND if voter == 'channel approver' else '400'}"
        first = await press(tenant, payload, early.removeprefix("telegram:"))
    assert list(first.approval.approved_by) == [early]

    await withdraw(tenant, key_id)
    deciding = await press(tenant, payload, THIRD)
    assert deciding.approval.status == cm.APPROVAL_STATUS_PENDING
    assert list(deciding.approval.approved_by) == [f"telegram:{THIRD}"]
    assert deciding.owner_text == f"👍 1 of 2 approvals (by telegram:{THIRD})"
    assert list((await approval(tenant, req.approval_id)).approved_by) == [f"telegram:{THIRD}"]
    assert (await check(tenant, consistent=True)).decision == az.DECISION_PAIRING_REQUIRED
    votes = await events(tenant, "pairing.vote")
    connector_key = tenant.keys["connector"].split(".")[2]
    early_key = key_id if voter == "approver key" else connector_key
    assert [(e.actor, json.loads(e.details_json)) for e in votes] == [
        (early, {"votes": 1, "required_approvals": 2, "key": early_key}),
        (
            f"telegram:{THIRD}",
            {"votes": 1, "required_approvals": 2, "dropped": [early], "key": connector_key},
        ),
    ]
    # A voter who still qualifies completes it.
    final = await press(tenant, payload, OWNER)
    assert final.approval.status == cm.APPROVAL_STATUS_APPROVED
    assert list(final.approval.approved_by) == [f"telegram:{THIRD}", f"telegram:{OWNER}"]
    assert (await check(tenant)).decision == az.DECISION_ALLOW


async def test_deciding_vote_keeps_votes_that_still_qualify(tenant: Tenant) -> None:
    await quorum_channel(tenant, 3)
    req = await pair(tenant)
    payload = button(req, APPROVE)
    await press(tenant, payload, SECOND)
    await quorum_channel(tenant, 3, (SECOND, THIRD, "400"))  # a policy change that keeps them
    await press(tenant, payload, OWNER)
    final = await press(tenant, payload, THIRD)
    assert final.approval.status == cm.APPROVAL_STATUS_APPROVED
    assert list(final.approval.approved_by) == [
        f"telegram:{SECOND}",
        f"telegram:{OWNER}",
        f"telegram:{THIRD}",
    ]
    [approved] = await events(tenant, "pairing.approved")
    assert "dropped" not in json.loads(approved.details_json)


async def test_unauthorized_actor_cannot_vote(tenant: Tenant) -> None:
    await quorum_channel(tenant, 2)
    req = await pair(tenant)
    err = await rpc_error(press(tenant, button(req, APPROVE), "999"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert list((await approval(tenant, req.approval_id)).approved_by) == []


async def test_votes_expire_with_the_request(tenant: Tenant, dsns: Dsns) -> None:
    from .pairing_helpers import expire_now

    await quorum_channel(tenant, 2)
    req = await pair(tenant)
    await press(tenant, button(req, APPROVE), OWNER)
    await expire_now(dsns, tenant.tenant_id, req.approval_id)
    err = await rpc_error(press(tenant, button(req, APPROVE), SECOND))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await approval(tenant, req.approval_id)).status == cm.APPROVAL_STATUS_EXPIRED
    # A new request starts from zero votes.
    again = await pair(tenant)
    assert again.created
    fresh = await press(tenant, button(again, APPROVE), SECOND)
    assert fresh.approval.status == cm.APPROVAL_STATUS_PENDING and len(fresh.approval.approved_by) == 1


async def test_required_count_is_captured_when_the_request_is_made(tenant: Tenant) -> None:
    await quorum_channel(tenant, 2)
    live = await pair(tenant, "42")
    await quorum_channel(tenant, 1)  # a later policy change does not alter live requests
    vote = await press(tenant, button(live, APPROVE), OWNER)
    assert vote.approval.status == cm.APPROVAL_STATUS_PENDING and vote.approval.required_approvals == 2
    newer = await pair(tenant, "43")
    done = await press(tenant, button(newer, APPROVE), OWNER)
    assert done.approval.status == cm.APPROVAL_STATUS_APPROVED and done.approval.required_approvals == 1
    assert done.owner_text == f"✅ Approved by telegram:{OWNER}"


async def test_approval_by_code_votes_too(tenant: Tenant) -> None:
    await quorum_channel(tenant, 2)
    req = await pair(tenant)
    first = await tenant.approver.authz.ResolveApproval(
        az.ResolveApprovalRequest(code=az.CodeRef(channel_id="tg", code=req.code.lower()), action=APPROVE)
    )
    assert first.approval.status == cm.APPROVAL_STATUS_PENDING
    second = await press(tenant, button(req, APPROVE), OWNER)
    assert second.approval.status == cm.APPROVAL_STATUS_APPROVED


async def test_concurrent_votes_produce_exactly_one_final_approval(tenant: Tenant) -> None:
    """Five distinct approvers press at once on a request that needs three:
    two votes, one approval, two late."""
    approvers = ("201", "202", "203", "204")
    await quorum_channel(tenant, 3, approvers)
    for round_ in range(3):
        user = str(500 + round_)
        req = await pair(tenant, user)
        payload = button(req, APPROVE)
        results = await asyncio.gather(
            *(press(tenant, payload, a) for a in (OWNER, *approvers)), return_exceptions=True
        )
        answers = [r for r in results if isinstance(r, az.ResolveApprovalResponse)]
        errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(answers) + len(errors) == 5, results
        final = [a for a in answers if a.approval.status == cm.APPROVAL_STATUS_APPROVED]
        votes = [a for a in answers if a.approval.status == cm.APPROVAL_STATUS_PENDING]
        assert len(final) == 1 and len(votes) == 2 and len(errors) == 2
        assert all(e.code() == grpc.StatusCode.FAILED_PRECONDITION for e in errors)
        assert sorted(len(v.approval.approved_by) for v in votes) == [1, 2]
        assert len(set(final[0].approval.approved_by)) == 3
        assert (await check(tenant, user)).decision == az.DECISION_ALLOW
    approved = await events(tenant, "pairing.approved")
    assert len(approved) == 3
    assert len(await events(tenant, "pairing.vote")) == 6


# --- across processes ------------------------------------------------------------------


@pytest.fixture
async def two_processes(dsns: Dsns) -> AsyncIterator[tuple[Replica, Replica, str]]:
    async with two_replicas(dsns) as pair:
        yield pair.a, pair.b, pair.operator_key


async def test_votes_are_shared_by_two_processes_and_survive_a_restart(
    two_processes: tuple[Replica, Replica, str],
) -> None:
    a, b, operator_key = two_processes
    clients: list[Client] = []
    try:
        op = connect(a.address, operator_key)
        created = await op.admin.CreateTenant(adm.CreateTenantRequest(tenant_id="q" + secrets.token_hex(5)))
        await op.close()
        admin = connect(a.address, created.secret)
        clients.append(admin)
        await admin.admin.SetChannel(
            adm.SetChannelRequest(
                channel_id="tg", platform=cm.PLATFORM_TELEGRAM,
                policy=cm.ChannelPolicy(owner_id=OWNER, approvers=[SECOND, THIRD], required_approvals=3),
            )
        )  # fmt: skip
        key = (await admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR))).secret
        on_a, on_b = connect(a.address, key), connect(b.address, key)
        clients += [on_a, on_b]
        req = await on_a.authz.RequestPairing(az.RequestPairingRequest(channel_id="tg", user_id="42"))
        payload = button(req, APPROVE)

        def vote(client: Client, actor: str) -> Awaitable[az.ResolveApprovalResponse]:
            return client.authz.ResolveApproval(
                az.ResolveApprovalRequest(callback_payload=payload, actor_id=actor)
            )

        first = await vote(on_a, OWNER)
        assert list(first.approval.approved_by) == [f"telegram:{OWNER}"]
        # Process B sees A's vote: the owner's repeat there is not a second vote.
        repeat = await vote(on_b, OWNER)
        assert repeat.approval.status == cm.APPROVAL_STATUS_PENDING and len(repeat.approval.approved_by) == 1
        second = await vote(on_b, SECOND)
        assert list(second.approval.approved_by) == [f"telegram:{OWNER}", f"telegram:{SECOND}"]

        # Both processes die; the votes are in PostgreSQL.
        assert await a.stop(signal.SIGKILL) == -signal.SIGKILL
        assert await b.stop(signal.SIGKILL) == -signal.SIGKILL
        await asyncio.gather(a.start(), b.start())
        final = await vote(on_a, THIRD)
        assert final.approval.status == cm.APPROVAL_STATUS_APPROVED
        assert len(final.approval.approved_by) == 3
        allowed = await on_b.authz.CheckUser(
            az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=cm.CHAT_KIND_DIRECT, consistent=True)
        )
        assert allowed.decision == az.DECISION_ALLOW
    finally:
        for c in clients:
            await c.close()
