"""Topology descriptions: nodes, links and where the path's shaping goes.

A topology's ``build()`` only describes (mininet ``Topo`` style); testbed/net
turns the description into a running network. Nodes have a role: ``client`` and
``server`` are endpoints, ``router`` and ``middlebox`` forward (the middlebox
catalogue installs its models on ``middlebox`` nodes).

Path shaping: a probe or experiment gives one end-to-end RTT, loss and rate.
The RTT is split evenly over the links of the client-server path (each link gets
RTT / (2 * links) each way); loss and rate sit on the client's access link, the
bottleneck (fan-in: the shared router-server link). Per-link overrides are
passed as ``links={name: LinkSpec}``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from testbed.errors import ConfigError
from topologies.shapes import LinkShape, LinkSpec, PathShape

ROLES = ("client", "server", "router", "middlebox")


@dataclass(frozen=True)
class NodeDesc:
    name: str
    role: str


@dataclass(frozen=True)
class LinkDesc:
    name: str
    a: str
    b: str
    spec: LinkSpec = field(default_factory=LinkSpec)


class Topology:
    """Base class: subclasses implement ``build`` with add_node / add_link."""

    name = ""
    description = ""
    # Link that carries the path's loss and rate; None = each client's access link.
    bottleneck: str | None = None

    def __init__(self, path: PathShape | None = None, links: dict[str, LinkSpec] | None = None):
        self.nodes: dict[str, NodeDesc] = {}
        self.links: list[LinkDesc] = []
        self.build()
        self._apply_path(path or PathShape())
        for link_name, spec in (links or {}).items():
            self.set_link(link_name, spec)

    def build(self) -> None:
        raise NotImplementedError

    def add_node(self, name: str, role: str) -> None:
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r} for {name}", f"roles: {ROLES}")
        if name in self.nodes:
            raise ConfigError(f"duplicate node {name}")
        self.nodes[name] = NodeDesc(name, role)

    def add_link(self, a: str, b: str, name: str | None = None) -> None:
        for end in (a, b):
            if end not in self.nodes:
                raise ConfigError(f"link to unknown node {end}")
        self.links.append(LinkDesc(name or f"{a}-{b}", a, b))

    # -- queries ---------------------------------------------------------

    def role_nodes(self, role: str) -> list[str]:
        return [n.name for n in self.nodes.values() if n.role == role]

    @property
    def clients(self) -> list[str]:
        return self.role_nodes("client")

    @property
    def server(self) -> str:
        return self.role_nodes("server")[0]

    @property
    def middleboxes(self) -> list[str]:
        return self.role_nodes("middlebox")

    def neighbours(self, node: str) -> list[tuple[str, LinkDesc]]:
        out = []
        for link in self.links:
            if link.a == node:
                out.append((link.b, link))
            elif link.b == node:
                out.append((link.a, link))
        return out

    def path(self, src: str, dst: str) -> list[LinkDesc]:
        """Links on the (unique, tree) path from src to dst, in order."""
        prev: dict[str, tuple[str, LinkDesc] | None] = {src: None}
        frontier = [src]
        while frontier:
            node = frontier.pop(0)
            for nxt, link in self.neighbours(node):
                if nxt not in prev:
                    prev[nxt] = (node, link)
                    frontier.append(nxt)
        if dst not in prev:
            raise ConfigError(f"no path from {src} to {dst} in topology {self.name}")
        links: list[LinkDesc] = []
        node = dst
        while (step := prev[node]) is not None:
            node, link = step
            links.append(link)
        return links[::-1]

    def link(self, name: str) -> LinkDesc:
        for link in self.links:
            if link.name == name:
                return link
        known = ", ".join(link.name for link in self.links)
        raise ConfigError(f"topology {self.name} has no link {name!r}", f"links: {known}")

    def set_link(self, name: str, spec: LinkSpec) -> None:
        old = self.link(name)
        self.links[self.links.index(old)] = LinkDesc(old.name, old.a, old.b, spec)

    # -- path shaping ----------------------------------------------------

    def _apply_path(self, path: PathShape) -> None:
        for client in self.clients:
            links = self.path(client, self.server)
            one_way = path.rtt_ms / 2.0 / len(links)
            jitter = path.jitter_ms / len(links)
            for index, link in enumerate(links):
                bottleneck = (
                    link.name == self.bottleneck if self.bottleneck else index == 0
                )
                shape = LinkShape(
                    delay_ms=one_way,
                    jitter_ms=jitter,
                    loss=path.loss if bottleneck else 0.0,
                    rate_bps=path.rate_bps if bottleneck else None,
                    queue_packets=path.queue_packets if bottleneck else None,
                )
                self.set_link(link.name, LinkSpec.symmetric(shape))


_REGISTRY: dict[str, Callable[..., Topology]] = {}


def register(cls: type[Topology]) -> type[Topology]:
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"topology name {cls.name!r} empty or taken")
    _REGISTRY[cls.name] = cls
    return cls


def parse_spec(spec: str) -> tuple[str, dict[str, int]]:
    """``fanin:clients=100`` -> ("fanin", {"clients": 100}); a plain name has no parameters."""
    name, _, params = spec.partition(":")
    kwargs: dict[str, int] = {}
    for item in filter(None, params.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not value.strip().isdigit():
            raise ConfigError(f"bad topology parameter {item!r} in {spec!r}",
                              "write it like fanin:clients=100")
        kwargs[key.strip()] = int(value)
    return name, kwargs


def create(name: str, **kwargs: object) -> Topology:
    """A topology by name; ``name`` may carry parameters (``fanin:clients=N``)."""
    name, params = parse_spec(name)
    if name not in _REGISTRY:
        raise ConfigError(f"unknown topology {name!r}", f"choose from {', '.join(names())}")
    cls = _REGISTRY[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "path", "links"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(f"topology {name} has no parameter(s) {unknown}",
                          f"its parameters: {sorted(accepted) or 'none'}")
    try:
        return cls(**kwargs, **params)
    except ValueError as exc:
        raise ConfigError(f"topology {name}: {exc}", "see `tcpinc topologies`") from exc


def names() -> list[str]:
    return sorted(_REGISTRY)


def describe() -> dict[str, str]:
    return {name: getattr(_REGISTRY[name], "description", "") for name in names()}
