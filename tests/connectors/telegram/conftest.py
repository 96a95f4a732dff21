"""The Telegram tests' fixtures: ``fake`` and ``make_bot``."""

from .rig import fake, make_bot

__all__ = ["fake", "make_bot"]
