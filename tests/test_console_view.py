"""What the console shows of the API's messages (api/console_view.py): hidden
characters made visible, the requester's details as stored with the request."""

from __future__ import annotations

from authz_service.api import console_view as view
from authz_service.gen.authz.v1 import common_pb2 as cm


def test_the_requester_details_stored_with_the_request_are_shown() -> None:
    a = cm.Approval(
        kind=cm.APPROVAL_KIND_PAIRING, first_message="hi \u202eevil", handle="ann", platform="telegram"
    )
    shown = view.approval(a, {"tg": "slack"})
    assert shown.details == [("First message", "hi \\u202eevil"), ("Handle", "@ann")]
    assert shown.platform == "telegram"  # the request's own, before the channel's
    bare = view.approval(cm.Approval(channel_id="tg"), {"tg": "slack"})
    assert (bare.details, bare.platform) == ([], "slack")


def test_an_approval_is_rendered_with_visible_text_and_its_quorum() -> None:
    a = cm.Approval(
        approval_id="apr_x", kind=cm.APPROVAL_KIND_TOOL, status=cm.APPROVAL_STATUS_PENDING,
        display_name="Bob\u2066", required_approvals=2, approved_by=["telegram:1"],
        tool=cm.ToolCall(tool_name="shell", arguments_json='{"cmd":"ls \\u202e","n":1}', agent_id="ops"),
    )  # fmt: skip
    shown = view.approval(a, {})
    assert shown.is_tool and shown.display_name == "Bob\\u2066"
    assert shown.quorum == "1 of 2" and shown.approved_by == ["telegram:1"]
    assert shown.arguments == '{\n  "cmd": "ls \\u202e",\n  "n": 1\n}'
