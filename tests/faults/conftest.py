"""The fault tests' fixtures: ``authz serve`` processes and the PostgreSQL proxy."""

from .load import proxy, spawn

__all__ = ["proxy", "spawn"]
