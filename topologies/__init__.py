"""Registered topologies (import registers them)."""

from topologies import catalogue as _catalogue  # noqa: F401  (registers the classes)
from topologies.base import LinkDesc, NodeDesc, Topology, create, describe, names
from topologies.shapes import LinkShape, LinkSpec, PathShape

__all__ = ["LinkDesc", "LinkShape", "LinkSpec", "NodeDesc", "PathShape", "Topology", "create",
           "describe", "names"]
