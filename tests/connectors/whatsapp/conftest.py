"""The WhatsApp tests' fixtures: ``open_rig`` and ``rig``."""

from .rig import open_rig, rig

__all__ = ["open_rig", "rig"]
