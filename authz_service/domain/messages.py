"""Every text a connector is told to send, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from . import display
from .model import ApprovalAction, ToolCall

PAIRED = "✅ Paired! You can chat now."
DENIED = "❌ Your pairing request was denied."
ALREADY_ALLOWED = "✅ You're already paired. You can chat now."
CAPACITY = "⏳ Too many pending pairing requests right now. Please try again later."


def pairing_code(code: str, minutes: int, channel_id: str, in_chat: bool) -> str:
    """``in_chat``: the owner or another approver is sent the request in chat;
    otherwise the requester is told how the owner approves from the CLI."""
    if in_chat:
        return (
            f"🔑 Pairing code: {code}\n"
            f"The owner has been asked to approve you. The code expires in {minutes} min."
        )
    return (
        f"🔑 Pairing code: {code}\n"
        f"Ask the owner to run: authz pairing approve {channel_id} {code}\n"
        f"The code expires in {minutes} min."
    )


def owner_notification(
    channel_id: str,
    user_id: str,
    display_name: str,
    first_message: str,
    code: str,
    minutes: int,
    *,
    renewal: bool = False,
    handle: str = "",
    platform: str = "",
) -> str:
    """``first_message`` as stored (domain.pairing.stored_first_message: cut,
    hidden characters made visible); ``handle`` without the "@"."""
    lines = [f"🔁 Pairing renewal on {channel_id}" if renewal else f"🔔 Pairing request on {channel_id}"]
    lines.append(f"From: {requester(user_id, display_name, handle)}")
    if platform:
        lines.append(f"Platform: {platform}")
    if renewal:
        lines.append("Their previous pairing expired.")
    if first_message:
        lines.append(f"First message: “{display.visible(first_message)}”")
    lines.append(f"Code: {code} (expires in {minutes} min)")
    return "\n".join(lines)


def requester(user_id: str, display_name: str, handle: str = "") -> str:
    """ "Alice (@alice, 4242)": the name and handle are the requester's own
    claims, so the id is always shown, and hidden characters made visible."""
    at = f"@{display.visible(handle)}" if handle else ""
    if display_name:
        return (
            f"{display.visible(display_name)} ({at}, {user_id})"
            if at
            else f"{display.visible(display_name)} ({user_id})"
        )
    return f"{at} ({user_id})" if at else user_id


BUTTON_LABELS = {
    ApprovalAction.APPROVE: "✅ Approve",
    ApprovalAction.DENY: "❌ Deny",
    ApprovalAction.BLOCK: "⛔ Block",
    ApprovalAction.ALWAYS_ALLOW: "♾️ Always allow",
}


def requester_outcome(action: ApprovalAction) -> str:
    # A blocked requester is told nothing: they learn no more than a stranger.
    return {ApprovalAction.APPROVE: PAIRED, ApprovalAction.DENY: DENIED}.get(action, "")


# Every tool notification fits one message on every platform: Discord's 2000
# characters (UTF-16 units) is the smallest limit (Slack's section: 3000,
# Telegram: 4096 UTF-16 units). A connector never has to cut it.
MAX_NOTIFICATION = 2000
# The agent's "why" is its own words, not part of the call: shown cut, marked.
SUMMARY_SHOWN = 300


@dataclass(frozen=True, slots=True)
class ToolNotice:
    """The approver's notification of a tool call. ``in_full``: the whole call
    (tool name and every argument, escaped) is in ``text``, so it may be
    decided from chat; otherwise it carries no buttons and points to where the
    call can be read in full."""

    text: str
    in_full: bool


def tool_notification(call: ToolCall, approval_id: str, requester_id: str, seconds: int) -> ToolNotice:
    """What the approver reads before pressing Approve: the call exactly as it
    will run (never cut), hidden characters made visible, and the agent's own
    claims (risk, why) labelled as such: the service does not classify risk."""
    head = [f"🛠️ Approval needed: {call.tool_name}"]
    if call.agent_id:
        head.append(f"Agent: {call.agent_id}")
    if requester_id:
        head.append(f"For: {requester_id}")
    head.append(f"Risk (the agent's claim): {call.risk.value}")
    if call.summary:
        head.append(f"Why (the agent's words): {display.visible_prefix(call.summary, SUMMARY_SHOWN)}")
    show = f"authz approvals show {approval_id}"
    tail = f"Expires in {max(1, seconds)} s. In full: {show}"
    text = "\n".join([*head, f"Arguments (in full): {display.visible(call.arguments)}", tail])
    if display.utf16_length(text) <= MAX_NOTIFICATION:
        return ToolNotice(text, in_full=True)
    size = display.utf16_length(call.arguments)
    lines = [
        *head,
        f"⚠️ The arguments ({size} characters) are too long to show here, so this call cannot be "
        "approved from chat. Read it in full and decide with:",
        show,
        f"authz approvals approve {approval_id}  (or deny)",
        f"Expires in {max(1, seconds)} s",
    ]
    return ToolNotice("\n".join(lines), in_full=False)


def owner_outcome(action: ApprovalAction, actor: str) -> str:
    verb = {
        ApprovalAction.APPROVE: "✅ Approved",
        ApprovalAction.DENY: "❌ Denied",
        ApprovalAction.BLOCK: "⛔ Blocked",
        ApprovalAction.ALWAYS_ALLOW: "♾️ Always allowed",
    }
    return f"{verb[action]} by {actor}"


# --- pairing lifecycle: quorum, auto-approve, invites ---------------------------

AUTO_APPROVED = "✅ You're approved. You can chat now."
INVITE_ACCEPTED = "✅ Invite accepted. You can chat now."
INVITE_INVALID = "❌ This invite code is not valid."


def quorum_progress(votes: int, required: int, actor: str) -> str:
    return f"👍 {votes} of {required} approvals (by {actor})"


def invite_attempts_exceeded(seconds: int) -> str:
    minutes = max(1, -(-seconds // 60))
    return f"⏳ Too many invalid invite codes. Please try again in {minutes} min."
