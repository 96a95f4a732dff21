"""What the console shows of the API's messages (api/console_view.py): hidden
characters made visible, requester details shown when the message has them."""

from __future__ import annotations

from authz_service.api import console_view as view
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm


def test_requester_details_are_shown_when_the_message_carries_them() -> None:
    # RequestPairingRequest has a first_message field; the details read any message that does.
    shown = view._details(az.RequestPairingRequest(first_message="hi \u202eevil"), view.REQUESTER_DETAILS)
    assert shown == [("First message", "hi \\u202eevil")]
    assert view._details(az.RequestPairingRequest(), view.REQUESTER_DETAILS) == []


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
