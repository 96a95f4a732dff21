"""The sweep's module-scoped fixtures (tenant A's world, the schema owner's connection)."""

from .sweep import owner, world

__all__ = ["owner", "world"]
