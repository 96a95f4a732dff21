"""Multi-tenant authorization service for chat-bot agents."""

__version__ = "0.1.0"
