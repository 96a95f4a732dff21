"""The chart tests' module-scoped ``chart`` fixture."""

from .rendering import chart

__all__ = ["chart"]
