"""Connector sidecars (Telegram, Slack, Discord): see issue #3. Only the package exists so far."""
