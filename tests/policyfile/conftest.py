"""The policy file tests' ``cli`` fixture."""

from .files import cli

__all__ = ["cli"]
