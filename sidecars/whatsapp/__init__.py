"""WhatsApp connector: the Cloud API through pywa (async), translation only.

- identities are phone numbers as WhatsApp reports them (``wa_id``), stored the
  way the service stores WhatsApp ids: E.164 with the "+" ("+84912345678");
  the number is also reported to the service as the requester's verified phone,
  for the channel's phone-pattern auto-approve rules;
- only direct messages are routed (the chat is the person);
- approval buttons are interactive reply buttons (at most three, titles of 20
  characters) whose ids are the service's callback payloads verbatim; every
  approver's copy comes from the notification outbox (:mod:`sidecars.outbox`),
  and each change of a copy is posted as a new message (WhatsApp cannot edit
  one), which is also the presser's confirmation;
- WhatsApp's 24-hour customer-service window: see :mod:`.transport`.

This package only translates: :mod:`.webhook` (Meta → ``Inbound`` and presses),
:mod:`.transport` (``Transport`` over the Graph API). Every decision is made in
:mod:`sidecars.runtime`.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
from pywa_async.client import WhatsApp
from pywa_async.types.templates import TemplateLanguage

from ..config import ConfigError, ConnectorConfig, WhatsAppSettings
from ..runtime import ApproverUnreachable, StartConnector
from .transport import (
    CustomerWindow,
    NotifyTemplate,
    OutsideWindow,
    WhatsAppTransport,
)
from .webhook import WEBHOOK_PATH, WhatsAppBot

__all__ = [
    "WEBHOOK_PATH",
    "ApproverUnreachable",
    "CustomerWindow",
    "OutsideWindow",
    "WhatsAppBot",
    "WhatsAppTransport",
    "build_client",
    "notify_template",
    "run",
]

log = logging.getLogger("sidecars.whatsapp")

# pywa logs whole updates and request bodies (message texts) at DEBUG: never those.
logging.getLogger("pywa").setLevel(logging.INFO)
logging.getLogger("pywa_async").setLevel(logging.INFO)


def build_client(settings: WhatsAppSettings, session: httpx.AsyncClient) -> WhatsApp:
    """The pywa client on ``session`` (the caller closes it): sends as ``phone_number_id``,
    validates every update with the app secret, and ignores updates addressed to
    other phone numbers."""
    wa = WhatsApp(
        phone_id=settings.phone_number_id,
        token=settings.access_token,
        session=session,
        webhook_endpoint=WEBHOOK_PATH,
        verify_token=settings.verify_token,
        app_secret=settings.app_secret,
        validate_updates=True,
        filter_updates=True,
        skip_duplicate_updates=True,
    )
    if settings.base_url:
        # pywa sets graph.facebook.com on the session it is given; this session is ours.
        session.base_url = httpx.URL(settings.base_url.rstrip("/"))
    return wa


def notify_template(settings: WhatsAppSettings) -> NotifyTemplate | None:
    if not settings.notify_template:
        return None
    # Looked up by value: TemplateLanguage("xx_YY") raises a TypeError in pywa 4.5, not a ValueError.
    language = {member.value: member for member in TemplateLanguage}.get(settings.notify_template_language)
    if language is None:
        raise ConfigError(
            f"whatsapp.notify_template_language: not a WhatsApp template language: "
            f"{settings.notify_template_language!r}"
        )
    return NotifyTemplate(settings.notify_template, language)


async def run(config: ConnectorConfig, start: StartConnector) -> None:
    """The platform plugin entry point (see :mod:`sidecars.main`)."""
    if config.whatsapp is None:
        raise ConfigError("whatsapp: section required")
    settings = config.whatsapp
    template = notify_template(settings)
    if template is None:
        log.info("no whatsapp.notify_template: owners outside the 24-hour window are not notified")
    async with httpx.AsyncClient(timeout=httpx.Timeout(15.0)) as session:
        wa = build_client(settings, session)
        # Fails fast on a rejected token or a wrong phone number id, before anything is served.
        number = await wa.get_business_phone_number()
        log.info("whatsapp business number %s (%s)", number.display_phone_number, number.verified_name)
        window = CustomerWindow()
        connector = await start(WhatsAppTransport(wa, window, template))
        bot = WhatsAppBot(connector, wa, settings.verify_token, window)
        try:
            await bot.start(settings.listen)
            log.info("whatsapp connector running for channel %s", config.channel_id)
            await asyncio.Event().wait()
        finally:
            await bot.close()
