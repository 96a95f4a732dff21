"""What an approver decides on (#17 item 7): the requester's first message,
name, @handle and platform are stored with the pairing request and shown in
the notification, the API, `authz pairing list` and `authz approvals show`."""

from __future__ import annotations

import json
import logging

import grpc
import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az

from .conftest import Service, Tenant, rpc_error
from .pairing_helpers import OWNER
from .policy_helpers import Cli, make_cli

SECRET_TEXT = "my invoice number is 88-1234"


@pytest.fixture
def cli(service: Service, tenant: Tenant) -> Cli:
    return make_cli(service, tenant)


async def ask(
    t: Tenant, first_message: str = SECRET_TEXT, handle: str = "@alice_w"
) -> az.RequestPairingResponse:
    return await t.connector.authz.RequestPairing(
        az.RequestPairingRequest(
            channel_id="tg", user_id="42", display_name="Alice", first_message=first_message, handle=handle
        )
    )


async def test_the_request_keeps_what_the_owner_decides_on(
    tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await tenant.channel(owner_id=OWNER)
    resp = await ask(tenant)
    text = resp.notification.text
    assert "From: Alice (@alice_w, 42)" in text and "Platform: telegram" in text
    assert f"First message: “{SECRET_TEXT}”" in text

    got = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=resp.approval_id))
    assert (got.display_name, got.handle, got.platform, got.first_message) == (
        "Alice", "alice_w", "telegram", SECRET_TEXT)  # fmt: skip
    # A repeat returns the live request and changes nothing stored.
    await ask(tenant, first_message="something else", handle="other")
    again = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=resp.approval_id))
    assert (again.handle, again.first_message) == ("alice_w", SECRET_TEXT)
    # Message text is never logged.
    assert not any(SECRET_TEXT in f"{r.getMessage()} {r.__dict__}" for r in caplog.records)


async def test_the_first_message_is_stored_cut_and_with_hidden_characters_visible(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER)
    resp = await ask(tenant, first_message="pay \u202eexe.txt " + "x" * 1000)
    got = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=resp.approval_id))
    assert got.first_message.startswith("pay \\u202eexe.txt xxx") and "\u202e" not in got.first_message
    assert len(got.first_message) == 300 and got.first_message.endswith("…")
    assert got.first_message in resp.notification.text  # the owner read what is stored


@pytest.mark.parametrize(
    ("handle", "why"),
    [("alice\nFrom: the owner", "one line"), ("a" * 65, "at most 64")],
)
async def test_a_malformed_handle_is_refused_naming_the_field(tenant: Tenant, handle: str, why: str) -> None:
    await tenant.channel(owner_id=OWNER)
    err = await rpc_error(ask(tenant, handle=handle))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and (err.details() or "").startswith("handle")
    assert why in (err.details() or "")


async def test_pairing_list_and_approvals_show_them(tenant: Tenant, cli: Cli) -> None:
    await tenant.channel(owner_id=OWNER)
    resp = await ask(tenant, first_message="hello, I am Alice from accounting and I need the report")

    listed = await cli("pairing", "list", "tg")
    assert listed.code == 0, listed.err
    header, row = listed.out.splitlines()
    assert header.split() == [
        "APPROVAL_ID",
        "CHANNEL",
        "USER",
        "NAME",
        "HANDLE",
        "STATUS",
        "EXPIRES",
        "MESSAGE",
    ]
    assert "@alice_w" in row and "hello, I am Alice from accounting and I…" in row

    as_json = await cli("pairing", "list", "tg", "--json")
    [item] = json.loads(as_json.out)
    assert (item["handle"], item["platform"]) == ("@alice_w", "telegram")
    assert item["first_message"] == "hello, I am Alice from accounting and I need the report"

    shown = await cli("approvals", "show", resp.approval_id)
    lines = dict(line.split(":", 1) for line in shown.out.splitlines() if ":" in line)
    assert lines["handle"].strip() == "@alice_w" and lines["platform"].strip() == "telegram"
    assert lines["first_message"].strip() == "hello, I am Alice from accounting and I need the report"
    detail = json.loads((await cli("approvals", "show", resp.approval_id, "--json")).out)
    assert detail["first_message"].startswith("hello, I am Alice")
