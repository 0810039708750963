"""Registered topologies (import registers them)."""

from topologies import catalogue as _catalogue  # noqa: F401  (registers the classes)
from topologies.base import LinkDesc, NodeDesc, PathShape, Topology, create, describe, names

__all__ = ["LinkDesc", "NodeDesc", "PathShape", "Topology", "create", "describe", "names"]
