"""Fixtures shared by every tier."""

from native.ephemeral import ARTIFACTS, ROOT, EphemeralStack, free_port

__all__ = ["ARTIFACTS", "ROOT", "EphemeralStack", "free_port"]
