"""Every text a connector is told to send, in one place."""

from __future__ import annotations

from .model import ApprovalAction

PAIRED = "✅ Paired! You can chat now."
DENIED = "❌ Your pairing request was denied."
ALREADY_ALLOWED = "✅ You're already paired. You can chat now."
CAPACITY = "⏳ Too many pending pairing requests right now. Please try again later."


def pairing_code(code: str, minutes: int, channel_id: str, owner_notified: bool) -> str:
    if owner_notified:
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
) -> str:
    who = f"{display_name} ({user_id})" if display_name else user_id
    if renewal:
        lines = [f"🔁 Pairing renewal on {channel_id}", f"From: {who}", "Their previous pairing expired."]
    else:
        lines = [f"🔔 Pairing request on {channel_id}", f"From: {who}"]
    if first_message:
        snippet = first_message if len(first_message) <= 200 else first_message[:199] + "…"
        lines.append(f"First message: {snippet!r}")
    lines.append(f"Code: {code} (expires in {minutes} min)")
    return "\n".join(lines)


BUTTON_LABELS = {
    ApprovalAction.APPROVE: "✅ Approve",
    ApprovalAction.DENY: "❌ Deny",
    ApprovalAction.BLOCK: "⛔ Block",
    ApprovalAction.ALWAYS_ALLOW: "♾️ Always allow",
}


def requester_outcome(action: ApprovalAction) -> str:
    # A blocked requester is told nothing: they learn no more than a stranger.
    return {ApprovalAction.APPROVE: PAIRED, ApprovalAction.DENY: DENIED}.get(action, "")


def tool_notification(
    tool: str, arguments: str, agent_id: str, risk: str, summary: str, requester_id: str, seconds: int
) -> str:
    args = arguments if len(arguments) <= 500 else arguments[:499] + "…"
    lines = [f"🛠️ Approval needed: {tool} ({risk} risk)"]
    if agent_id:
        lines.append(f"Agent: {agent_id}")
    if requester_id:
        lines.append(f"For: {requester_id}")
    if summary:
        lines.append(f"Why: {summary}")
    lines.append(f"Arguments: {args}")
    lines.append(f"Expires in {max(1, seconds)} s")
    return "\n".join(lines)


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
