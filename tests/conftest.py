"""Fixtures shared by every tier."""

from hypothesis import settings

from tests.support.ephemeral import ARTIFACTS, ROOT, EphemeralStack, free_port

# Property-based tests: no per-example deadline (the machine runs whole stacks beside them, and a
# slow example is not a failure), and a failure prints what reproduces it.
settings.register_profile("stack", deadline=None, print_blob=True)
settings.load_profile("stack")

__all__ = ["ARTIFACTS", "ROOT", "EphemeralStack", "free_port"]
