"""``authz channel``: create, update, show and list channels (admin key)."""

from __future__ import annotations

import json
from typing import Any

import click
import grpc
import yaml

from .. import names
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import common_pb2 as cm
from .errors import CliError, RpcFailed
from .output import as_dict
from .policyfile import read_policy_overlay, read_text
from .schema import PolicyFileInvalid
from .session import TIMEOUT, Session, call, pass_session, session_options


@click.group(help="manage channels (one bot account each)")
def channel() -> None:
    pass


def channel_dict(ch: adm.Channel) -> dict[str, Any]:
    out: dict[str, Any] = {
        "channel_id": ch.channel_id,
        "platform": names.PLATFORM.label(ch.platform),
        "dm_policy": names.DM_POLICY.label(ch.policy.dm_policy),
        "group_policy": names.GROUP_POLICY.label(ch.policy.group_policy),
    }
    for k, v in as_dict(ch.policy).items():
        if k not in ("dm_policy", "group_policy"):
            out[k] = v
    return out


def _print(s: Session, ch: adm.Channel) -> None:
    d = channel_dict(ch)
    click.echo(
        json.dumps(d, indent=2) if s.json else yaml.safe_dump(d, sort_keys=False, allow_unicode=True).rstrip()
    )


@channel.command("set", help="create or update a channel's policy from flags and/or a YAML file")
@click.argument("channel_id", metavar="CHANNEL")
@click.option("-f", "--file", "file", help="YAML file with policy keys (see docs/configuration.md)")
@click.option("--platform", type=click.Choice(names.PLATFORM.labels))
@click.option("--dm-policy", type=click.Choice(names.DM_POLICY.labels))
@click.option("--group-policy", type=click.Choice(names.GROUP_POLICY.labels))
@click.option("--require-mention", type=click.Choice(["true", "false"]))
@click.option("--owner", help="owner's platform user id (gets Approve/Deny/Block buttons)")
@click.option("--approver", multiple=True, help="channel approver's platform user id (repeatable)")
@click.option("--agent", help="agent id messages route to")
@click.option("--code-ttl", type=int, help="pairing code lifetime in seconds (default 300)")
@click.option("--max-pending", type=int, help="live pairing requests allowed per channel (default 20)")
@click.option("--pairing-ttl", type=int, help="seconds until a pairing expires (0: never)")
@session_options
@pass_session
def set_(s: Session, channel_id: str, file: str | None, platform: str | None, dm_policy: str | None,
         group_policy: str | None, require_mention: str | None, owner: str | None, approver: tuple[str, ...],
         agent: str | None, code_ttl: int | None, max_pending: int | None, pairing_ttl: int | None) -> int:  # fmt: skip
    c = s.client()
    given = cm.ChannelPolicy()
    keys: list[str] = []
    if file:
        try:
            platform_in_file, given, keys = read_policy_overlay(read_text(file))
        except PolicyFileInvalid as exc:
            lines = [e.format(file) for e in exc.errors]
            raise CliError("\n".join([*lines, f"{file}: nothing was saved"])) from None
        platform = platform or platform_in_file
    # Flags are applied after the file and win over it.
    for field, value in (("dm_policy", dm_policy and names.DM_POLICY.number(dm_policy)),
                         ("group_policy", group_policy and names.GROUP_POLICY.number(group_policy)),
                         ("owner_id", owner), ("agent_id", agent), ("pairing_code_ttl_seconds", code_ttl),
                         ("max_pending", max_pending), ("pairing_ttl_seconds", pairing_ttl)):  # fmt: skip
        if value is not None:
            setattr(given, field, value)
            keys.append(field)
    if require_mention is not None:
        given.require_mention = require_mention == "true"
        keys.append("require_mention")
    if approver:
        del given.approvers[:]
        given.approvers.extend(approver)
        keys.append("approvers")
    # Keys given change only themselves: start from the stored policy if any.
    base = cm.ChannelPolicy()
    try:
        current = c.admin.GetChannel(adm.GetChannelRequest(channel_id=channel_id), timeout=TIMEOUT)
        base, platform = current.policy, platform or names.PLATFORM.label(current.platform)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise RpcFailed(exc) from None
    if platform not in names.PLATFORM.labels:
        raise CliError(f"--platform is required for a new channel: one of {', '.join(names.PLATFORM.labels)}")
    policy = cm.ChannelPolicy()
    policy.CopyFrom(base)
    for field in keys:  # a key given replaces that field whole: lists and maps are not merged
        policy.ClearField(field)  # type: ignore[arg-type]
    policy.MergeFrom(given)
    req = adm.SetChannelRequest(
        channel_id=channel_id, platform=cm.Platform.ValueType(names.PLATFORM.number(platform)), policy=policy
    )
    resp = call(c.admin.SetChannel, req)
    click.echo(f"channel {resp.channel_id} saved")
    _print(s, resp)
    return 0


@channel.command(help="show a channel's policy")
@click.argument("channel_id", metavar="CHANNEL")
@session_options
@pass_session
def show(s: Session, channel_id: str) -> int:
    _print(s, call(s.client().admin.GetChannel, adm.GetChannelRequest(channel_id=channel_id)))
    return 0


@channel.command("list", help="list channels")
@session_options
@pass_session
def list_(s: Session) -> int:
    resp = call(s.client().admin.ListChannels, adm.ListChannelsRequest())
    s.emit([channel_dict(ch) for ch in resp.channels],
           ["channel_id", "platform", "dm_policy", "group_policy", "owner_id"])  # fmt: skip
    return 0
