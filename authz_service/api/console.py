"""The web console (docs/console.md): server-rendered pages under ``/console/`` on
the HTTP port, for the people who approve requests and run channels.

Every page and every action calls the gRPC servicers themselves, as the HTTP
API does, with a ``ConsoleCall`` that carries the browser's session instead of
an ``Authorization`` header: ``api.rpc`` turns the session into the principal of
the API key it was opened with (flows.sessions), so the role checks, key
scopes, validation, audit and errors are the API's own. A key can do nothing
here that it cannot do with ``curl``.

Security (docs/security.md, "Web console"): the key is sent once, in a POST
body, and becomes an HttpOnly, SameSite=Strict (Secure with TLS) session
cookie; every change is a POST carrying the session's anti-forgery token; each
answer has a strict Content-Security-Policy (no inline script or style), denies
framing and caching. Templates escape everything (Jinja2 autoescape) and show
hidden characters as escapes (api.console_view).
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import jinja2
from aiohttp import web
from google.protobuf.message import Message

from .. import doctor_proto, names
from ..client import paging
from ..domain import doctor, errors
from ..domain.display import csv_cell, visible
from ..domain.model import Principal, Role
from ..flows import sessions
from ..flows.auth import Credentials
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import authz_pb2 as az
from ..gen.authz.v1 import common_pb2 as cm
from . import console_view as view
from .http import HTTP_STATUS, Aborted, HttpCall
from .rpc import STATUS, Runtime, peer_of

ROOT = "/console"
COOKIE = "authz_console"
LOGIN_COOKIE = "authz_console_login"
PAGE_SIZE = 50
AUDIT_PAGE = 100
EXPORT_MAX_EVENTS = 10_000
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_HERE = Path(__file__).parent
_STATIC = {"console.js": "text/javascript", "console.css": "text/css", "favicon.svg": "image/svg+xml"}
_NOTICES = {
    "approved": "Approved.",
    "denied": "Denied.",
    "blocked": "Blocked.",
    "allowed": "User added to the allowlist.",
    "removed": "User removed.",
    "unblocked": "User unblocked.",
    "purged": "User's data purged.",
    "revoked": "Invite revoked.",
}
_ACTIONS = {
    "approve": cm.APPROVAL_ACTION_APPROVE,
    "deny": cm.APPROVAL_ACTION_DENY,
    "block": cm.APPROVAL_ACTION_BLOCK,
}


@dataclass(frozen=True)
class ConsoleSettings:
    secure_cookies: bool = False
    """With TLS: cookies are Secure."""
    session_seconds: int = 8 * 3600


class ConsoleCall(HttpCall):
    """``HttpCall`` for a console request: no metadata from the browser's headers
    (no ``Authorization``, no cookies), the session instead (api.rpc reads
    ``console_session``)."""

    def __init__(self, request: web.Request, session: str) -> None:
        super().__init__(request)
        self.console_session = session

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


@dataclass(frozen=True)
class Page:
    """One signed-in request: the session cookie, its anti-forgery token, the key behind it."""

    token: str
    csrf: str
    principal: Principal


Handler = Callable[[Any, web.Request, Page], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=Message)


@web.middleware
async def security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The console's headers on each of its answers (errors and redirects too)."""
    if not request.path.startswith(ROOT):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _channel_url(channel_id: str, user_id: str | None = None) -> str:
    """A channel's (or one of its users') page; ids are path segments, each
    percent-encoded whole (a Slack id's ``:``, a WhatsApp number's ``+``)."""
    url = f"{ROOT}/channels/{urllib.parse.quote(channel_id, safe='')}"
    return url if user_id is None else f"{url}/users/{urllib.parse.quote(user_id, safe='')}"


def _to_login(reason: str = "") -> web.Response:
    response = _redirect(f"{ROOT}/login" + (f"?ended={reason}" if reason else ""))
    response.del_cookie(COOKIE, path=ROOT)
    return response


def get_page(handler: Handler) -> Callable[[Any, web.Request], Awaitable[web.StreamResponse]]:
    """A GET page: signed in, or sent to the login form."""

    async def run(self: Console, request: web.Request) -> web.StreamResponse:
        page = None
        try:
            page = await self._page(request)
            if page is None:
                return _to_login("1" if COOKIE in request.cookies else "")
            return await handler(self, request, page)
        except Aborted as exc:
            return self._error(page, exc)

    return run


def post_action(handler: Handler) -> Callable[[Any, web.Request], Awaitable[web.StreamResponse]]:
    """A POST change: signed in and carrying the session's anti-forgery token."""

    async def run(self: Console, request: web.Request) -> web.StreamResponse:
        page = None
        try:
            form = await request.post()
            token = request.cookies.get(COOKIE, "")
            presented = form.get("csrf")
            if not token:
                return _to_login("1")
            if not isinstance(presented, str) or not sessions.csrf_matches(
                self.runtime.keyring, token, presented
            ):
                raise Aborted(grpc.StatusCode.PERMISSION_DENIED, "missing or wrong anti-forgery token")
            page = await self._page(request)
            if page is None:
                return _to_login("1")
            return await handler(self, request, page)
        except Aborted as exc:
            return self._error(page, exc)

    return run


class Console:
    def __init__(self, authz: Any, admin: Any, settings: ConsoleSettings) -> None:
        self.authz, self.admin = authz, admin
        self.runtime: Runtime = admin.runtime
        self.settings = settings
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "console_templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    # --- plumbing ----------------------------------------------------------------------

    def render(self, name: str, status: int = 200, **values: Any) -> web.Response:
        """Template ``name``.html, every value escaped."""
        html = self.templates.get_template(name + ".html").render(root=ROOT, **values)
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    def _error(self, page: Page | None, exc: Aborted) -> web.StreamResponse:
        if exc.code is grpc.StatusCode.UNAUTHENTICATED:
            return _to_login("1")
        return self.render("error", HTTP_STATUS[exc.code], page=page, code=exc.code.name, message=exc.message)

    async def _page(self, request: web.Request) -> Page | None:
        token = request.cookies.get(COOKIE, "")
        if not token:
            return None
        try:
            principal = await sessions.session_principal(self.runtime.db, self.runtime.cache, token)
        except errors.Unauthenticated:
            return None
        except errors.AuthzError as exc:
            code = next(STATUS[c] for c in type(exc).__mro__ if c in STATUS)
            raise Aborted(code, exc.message) from None
        return Page(token, sessions.csrf_token(self.runtime.keyring, token), principal)

    async def call(self, request: web.Request, page: Page, method: Callable[..., Any], message: M) -> Any:
        return await method(message, ConsoleCall(request, page.token))

    def admin_call(self, request: web.Request, page: Page) -> paging.Call:
        """:meth:`call` on AdminService as the shared readers take it (client.paging, doctor_proto)."""

        async def run(method: str, message: Message) -> Any:
            return await self.call(request, page, getattr(self.admin, method), message)

        return run

    # --- login ---------------------------------------------------------------------------

    async def login_form(self, request: web.Request, error: str = "", status: int = 200) -> web.Response:
        # Login CSRF: a fresh random value in a cookie and in the form (double submit).
        nonce = secrets.token_urlsafe(24)
        ended = request.query.get("ended") == "1" and not error
        response = self.render("login", status, page=None, nonce=nonce, error=error, ended=ended)
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            path=ROOT,
            httponly=True,
            samesite="Strict",
            secure=self.settings.secure_cookies,
        )
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        nonce, key = form.get("nonce"), form.get("key")
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not (
            isinstance(nonce, str) and expected and secrets.compare_digest(nonce.encode(), expected.encode())
        ):
            return await self.login_form(request, "The form expired: try again.", 403)
        if not isinstance(key, str) or not key.strip():
            return await self.login_form(request, "Paste an API key.", 400)
        runtime = self.runtime
        creds = Credentials(
            key.strip()[:256],
            runtime.keyring,
            runtime.operator_key_hash,
            peer=peer_of(HttpCall(request).peer()),
            throttle=runtime.auth_throttle,
            legacy_keys=runtime.legacy_keys,
        )
        try:
            if runtime.gate.reason:
                raise errors.Unavailable(runtime.gate.reason)
            session = await sessions.open_session(
                runtime.db, creds, runtime.cache, self.settings.session_seconds
            )
        except errors.AuthzError as exc:
            code = next(STATUS[c] for c in type(exc).__mro__ if c in STATUS)
            return await self.login_form(request, exc.message, HTTP_STATUS[code])
        response = _redirect(f"{ROOT}/approvals")
        response.set_cookie(
            COOKIE,
            session.token,
            path=ROOT,
            max_age=self.settings.session_seconds,
            httponly=True,
            samesite="Strict",
            secure=self.settings.secure_cookies,
        )
        response.del_cookie(LOGIN_COOKIE, path=ROOT)
        return response

    @post_action
    async def logout(self, request: web.Request, page: Page) -> web.StreamResponse:
        await sessions.close_session(self.runtime.db, page.token)
        return _to_login()

    # --- approvals -------------------------------------------------------------------------

    async def _platforms(self, request: web.Request, page: Page) -> dict[str, str]:
        if page.principal.role is not Role.ADMIN:
            return {}  # an approver key may not list channels
        found = await self.call(request, page, self.admin.ListChannels, adm.ListChannelsRequest())
        return {c.channel_id: names.PLATFORM.label(c.platform) for c in found.channels}

    @get_page
    async def approvals(self, request: web.Request, page: Page) -> web.StreamResponse:
        token = request.query.get("page", "")
        found = await self.call(
            request,
            page,
            self.admin.ListApprovals,
            adm.ListApprovalsRequest(page_size=PAGE_SIZE, page_token=token),
        )
        platforms = await self._platforms(request, page)
        items = [view.approval(a, platforms) for a in found.approvals]
        values = {"page": page, "items": items, "next": found.next_page_token, "token": token}
        if request.query.get("fragment") == "1":
            return self.render("approvals_list", **values)
        return self.render("approvals", notice=_NOTICES.get(request.query.get("done", ""), ""), **values)

    @post_action
    async def resolve(self, request: web.Request, page: Page) -> web.StreamResponse:
        form = await request.post()
        action = _ACTIONS.get(str(form.get("action", "")))
        if action is None:
            raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, "action: must be approve, deny or block")
        await self.call(
            request,
            page,
            self.authz.ResolveApproval,
            az.ResolveApprovalRequest(approval_id=request.match_info["approval_id"], action=action),
        )
        done = {"approve": "approved", "deny": "denied", "block": "blocked"}[str(form["action"])]
        return _redirect(f"{ROOT}/approvals?done={done}")

    # --- channels --------------------------------------------------------------------------

    @get_page
    async def channels(self, request: web.Request, page: Page) -> web.StreamResponse:
        found = await self.call(request, page, self.admin.ListChannels, adm.ListChannelsRequest())
        rows = [(c.channel_id, view.policy_summary(c)) for c in found.channels]
        return self.render("channels", page=page, channels=rows)

    @get_page
    async def channel(self, request: web.Request, page: Page) -> web.StreamResponse:
        channel_id = request.match_info["channel_id"]
        which = request.query.get("filter", "all")
        user_filter = {
            "all": adm.USER_FILTER_UNSPECIFIED,
            "allowlisted": adm.USER_FILTER_ALLOWLISTED,
            "paired": adm.USER_FILTER_PAIRED,
            "blocked": adm.USER_FILTER_BLOCKED,
        }.get(which, adm.USER_FILTER_UNSPECIFIED)
        query, token = request.query.get("q", ""), request.query.get("page", "")
        channel = await self.call(
            request, page, self.admin.GetChannel, adm.GetChannelRequest(channel_id=channel_id)
        )
        users = await self.call(
            request,
            page,
            self.admin.ListUsers,
            adm.ListUsersRequest(
                channel_id=channel_id, filter=user_filter, page_size=PAGE_SIZE, page_token=token, query=query
            ),
        )
        invites = await self.call(
            request, page, self.admin.ListInvites, adm.ListInvitesRequest(channel_id=channel_id)
        )
        return self.render(
            "channel",
            page=page,
            channel_id=channel_id,
            summary=view.policy_summary(channel),
            users=[view.subject(s) for s in users.users],
            next=users.next_page_token,
            which=which,
            query=query,
            invites=[
                {
                    "invite_id": i.invite_id,
                    "uses": f"{i.uses} of {i.max_uses}" if i.max_uses else str(i.uses),
                    "expires_at": view.when(i.expires_at),
                    "note": visible(i.note),
                }
                for i in invites.invites
            ],
            notice=_NOTICES.get(request.query.get("done", ""), ""),
        )

    @post_action
    async def allow_user(self, request: web.Request, page: Page) -> web.StreamResponse:
        form = await request.post()
        channel_id = request.match_info["channel_id"]
        await self.call(
            request,
            page,
            self.admin.AllowUser,
            adm.AllowUserRequest(
                channel_id=channel_id,
                user_id=str(form.get("user_id", "")).strip(),
                display_name=str(form.get("display_name", "")).strip(),
            ),
        )
        return _redirect(_channel_url(channel_id) + "?done=allowed")

    @post_action
    async def user_action(self, request: web.Request, page: Page) -> web.StreamResponse:
        form = await request.post()
        channel_id, user_id = request.match_info["channel_id"], str(form.get("user_id", ""))
        what = request.match_info["what"]
        ref = adm.UserRef(channel_id=channel_id, user_id=user_id)
        back = str(form.get("back", "channel"))
        if what == "remove":
            await self.call(request, page, self.admin.RemoveUser, ref)
            done = "removed"
        elif what == "unpair":
            await self.call(request, page, self.admin.UnpairUser, ref)
            done = "removed"
        elif what == "unblock":
            await self.call(request, page, self.admin.UnblockUser, ref)
            done = "unblocked"
        elif what == "block":
            request_ = adm.BlockUserRequest(channel_id=channel_id, user_id=user_id, reason="web console")
            await self.call(request, page, self.admin.BlockUser, request_)
            done = "blocked"
        elif what == "purge":
            if form.get("confirm") != user_id:
                raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, "confirm: type the user id to purge")
            await self.call(request, page, self.admin.PurgeUser, ref)
            return _redirect(_channel_url(channel_id) + "?done=purged")
        elif what == "export":
            found = await self.call(request, page, self.admin.ExportUser, ref)
            return web.Response(
                text=found.json,
                content_type="application/json",
                headers={"Content-Disposition": 'attachment; filename="user-export.json"'},
            )
        else:
            raise web.HTTPNotFound()
        if back == "user":
            return _redirect(_channel_url(channel_id, user_id) + f"?done={done}")
        return _redirect(_channel_url(channel_id) + f"?done={done}")

    @post_action
    async def create_invite(self, request: web.Request, page: Page) -> web.StreamResponse:
        form = await request.post()
        channel_id = request.match_info["channel_id"]
        numbers = {}
        for name in ("max_uses", "days"):
            text = str(form.get(name, "") or "0").strip()
            if not text.isdigit() or int(text) > 10_000:
                raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: a whole number up to 10000")
            numbers[name] = int(text)
        made = await self.call(
            request,
            page,
            self.admin.CreateInvite,
            adm.CreateInviteRequest(
                channel_id=channel_id,
                max_uses=numbers["max_uses"],
                ttl_seconds=numbers["days"] * 86_400,
                note=str(form.get("note", "")).strip(),
            ),
        )
        # Shown once, as `authz invites create` prints it; the page is never cached (no-store).
        return self.render(
            "invite_created",
            page=page,
            channel_id=channel_id,
            code=made.code,
            expires_at=view.when(made.invite.expires_at),
            max_uses=made.invite.max_uses,
        )

    @post_action
    async def revoke_invite(self, request: web.Request, page: Page) -> web.StreamResponse:
        form = await request.post()
        await self.call(
            request,
            page,
            self.admin.RevokeInvite,
            adm.RevokeInviteRequest(invite_id=str(form.get("invite_id", ""))),
        )
        return _redirect(_channel_url(request.match_info["channel_id"]) + "?done=revoked")

    @get_page
    async def user(self, request: web.Request, page: Page) -> web.StreamResponse:
        channel_id, user_id = request.match_info["channel_id"], request.match_info["user_id"]
        # ExplainUser: the user's standing, route and pending requests as CheckUser sees them.
        found = await self.call(
            request,
            page,
            self.admin.ExplainUser,
            adm.ExplainUserRequest(channel_id=channel_id, user_id=user_id),
        )
        agent, binding_permissions = view.route(found)
        audit = await self.call(
            request,
            page,
            self.admin.QueryAudit,
            adm.QueryAuditRequest(channel_id=channel_id, user_id=user_id, limit=AUDIT_PAGE),
        )
        return self.render(
            "user",
            page=page,
            channel_id=channel_id,
            user_id=user_id,
            shown_user_id=visible(user_id),
            subject=view.subject(found.subject) if found.HasField("subject") else None,
            decision=view.decision(found),
            agent=agent,
            binding_permissions=binding_permissions,
            pending=[view.approval(a, {}) for a in found.pending],
            events=[view.audit_row(e) for e in audit.events],
            notice=_NOTICES.get(request.query.get("done", ""), ""),
        )

    # --- audit -----------------------------------------------------------------------------

    def _audit_request(self, request: web.Request) -> adm.QueryAuditRequest:
        q = request.query
        out = adm.QueryAuditRequest(
            channel_id=q.get("channel", ""), user_id=q.get("user", ""), event=q.get("event", "")
        )
        for name in ("since", "until"):
            text = q.get(name, "").strip()
            if text:
                try:
                    at = datetime.fromisoformat(text)
                except ValueError:
                    raise Aborted(
                        grpc.StatusCode.INVALID_ARGUMENT, f"{name}: a date and time, e.g. 2026-01-31T12:00"
                    ) from None
                getattr(out, name).FromDatetime(at if at.tzinfo else at.replace(tzinfo=UTC))
        return out

    @get_page
    async def audit(self, request: web.Request, page: Page) -> web.StreamResponse:
        query = self._audit_request(request)
        query.limit = AUDIT_PAGE
        after = request.query.get("after", "")
        query.after_event_id = int(after) if after.isdigit() else 0
        found = await self.call(request, page, self.admin.QueryAudit, query)
        filters = {k: request.query.get(k, "") for k in ("event", "user", "channel", "since", "until")}
        return self.render(
            "audit",
            page=page,
            events=[view.audit_row(e) for e in found.events],
            filters=filters,
            next=str(found.next_after_event_id) if found.next_after_event_id else "",
        )

    @get_page
    async def audit_export(self, request: web.Request, page: Page) -> web.StreamResponse:
        query = self._audit_request(request)
        query.limit = 1000
        rows: list[dict[str, str]] = []
        async for event in paging.audit_events(self.admin_call(request, page), query):
            rows.append(_export_row(event))
            if len(rows) == EXPORT_MAX_EVENTS:
                break
        if request.query.get("format") == "csv":
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=list(_EXPORT_FIELDS))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: csv_cell(v) for k, v in row.items()})
            text, kind, suffix = out.getvalue(), "text/csv", "csv"
        else:
            text, kind, suffix = json.dumps(rows, ensure_ascii=False, indent=1), "application/json", "json"
        disposition = f'attachment; filename="audit.{suffix}"'
        return web.Response(text=text, content_type=kind, headers={"Content-Disposition": disposition})

    # --- doctor ----------------------------------------------------------------------------

    @get_page
    async def doctor(self, request: web.Request, page: Page) -> web.StreamResponse:
        """``authz doctor``'s findings, read through the same RPCs (doctor_proto)."""
        snap = await doctor_proto.read(self.admin_call(request, page), datetime.now(UTC))
        findings = doctor.findings(snap)
        found = [
            {
                "severity": f.severity.value,
                "code": f.code,
                "channel_id": visible(f.channel_id),
                "message": visible(f.message),
                "fix": visible(f.fix),
            }
            for f in findings
        ]
        return self.render("doctor", page=page, findings=found, summary=doctor.summary(findings))

    # --- static and routes -----------------------------------------------------------------

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(
            body=(_HERE / "console_static" / name).read_bytes(), content_type=_STATIC[name], charset="utf-8"
        )

    async def index(self, _: web.Request) -> web.StreamResponse:
        return _redirect(f"{ROOT}/approvals")

    def add_routes(self, app: web.Application) -> None:
        app.middlewares.append(security_headers)
        r = app.router
        r.add_get(ROOT, self.index)
        r.add_get(ROOT + "/", self.index)
        r.add_get(ROOT + "/login", self.login_form)
        r.add_post(ROOT + "/login", self.login)
        r.add_post(ROOT + "/logout", self.logout)
        r.add_get(ROOT + "/static/{name}", self.static)
        r.add_get(ROOT + "/approvals", self.approvals)
        r.add_post(ROOT + "/approvals/{approval_id}/resolve", self.resolve)
        r.add_get(ROOT + "/channels", self.channels)
        r.add_get(ROOT + "/channels/{channel_id}", self.channel)
        r.add_post(ROOT + "/channels/{channel_id}/users", self.allow_user)
        r.add_post(ROOT + "/channels/{channel_id}/users/-/{what}", self.user_action)
        r.add_post(ROOT + "/channels/{channel_id}/invites", self.create_invite)
        r.add_post(ROOT + "/channels/{channel_id}/invites/revoke", self.revoke_invite)
        r.add_get(ROOT + "/channels/{channel_id}/users/{user_id}", self.user)
        r.add_get(ROOT + "/audit", self.audit)
        r.add_get(ROOT + "/audit/export", self.audit_export)
        r.add_get(ROOT + "/doctor", self.doctor)


_EXPORT_FIELDS = (
    "event_id",
    "at",
    "event",
    "actor",
    "channel_id",
    "subject",
    "approval_id",
    "trace_id",
    "details",
)


def _export_row(e: adm.AuditEvent) -> dict[str, str]:
    """An event as exported: exact values (no visible-escaping), times in ISO 8601."""
    return {
        "event_id": str(e.event_id),
        "at": e.at.ToDatetime(UTC).isoformat(),
        "event": e.event,
        "actor": e.actor,
        "channel_id": e.channel_id,
        "subject": e.subject,
        "approval_id": e.approval_id,
        "trace_id": e.trace_id,
        "details": e.details_json,
    }


def add_console(app: web.Application, *, authz: Any, admin: Any, settings: ConsoleSettings) -> None:
    """Serve the console on ``app`` (api.http.build_app's application)."""
    Console(authz, admin, settings).add_routes(app)
