"""doctor's approver_unreachable check, as a pure function of audit events."""

from __future__ import annotations

from datetime import UTC, datetime

from authz_service.domain import doctor
from authz_service.domain.model import Channel, ChannelPolicy, Platform

UNDELIVERABLE, REACHABLE = "notification.undeliverable", "notification.reachable"


def test_the_latest_word_on_each_approver_counts() -> None:
    found = doctor.unreachable_approvers(
        [
            (UNDELIVERABLE, "tg", "77", "chat_not_found"),
            (UNDELIVERABLE, "tg", "88", "bot_blocked"),
            (REACHABLE, "tg", "88", ""),
            (UNDELIVERABLE, "other", "88", "bot_blocked"),
        ]
    )
    assert found == (
        doctor.UnreachableView("other", "88", "bot_blocked"),
        doctor.UnreachableView("tg", "77", "chat_not_found"),
    )


def test_findings_name_the_approver_and_what_to_do() -> None:
    channel = Channel("t", "tg", Platform.TELEGRAM, ChannelPolicy(owner_id="1"))
    snapshot = doctor.Snapshot(
        tenant=doctor.TenantView(approvers=(), agent_approvers={}, timezone="UTC"),
        channels=(channel,),
        subjects={},
        group_senders={},
        pending=(),
        now=datetime.now(UTC),
        unreachable=(
            doctor.UnreachableView("tg", "77", "chat_not_found"),
            doctor.UnreachableView("tg", "88", "bot_blocked"),
            doctor.UnreachableView("tg", "+15550002222", "outside_24h_window_no_template"),
            doctor.UnreachableView("gone", "99", "chat_not_found"),  # a deleted channel: nothing to say
        ),
    )
    found = [f for f in doctor.findings(snapshot) if f.code == doctor.APPROVER_UNREACHABLE]
    assert [f.message for f in found] == [
        "approver telegram:+15550002222 on channel tg has not written to the bot in the last 24 hours "
        "(outside_24h_window_no_template): they get no approval notifications",
        "approver telegram:77 on channel tg has never messaged the bot: they get no approval notifications",
        "approver telegram:88 on channel tg cannot be reached by the bot (bot_blocked): "
        "they get no approval notifications",
    ]
    assert "whatsapp.notify_template" in found[0].fix
    assert "open a DM with the bot" in found[1].fix
