"""The topologies every experiment uses: direct, middlebox, chain, fan-in."""

from __future__ import annotations

from topologies.base import Topology, register
from topologies.shapes import LinkSpec, PathShape


@register
class Direct(Topology):
    name = "direct"
    description = "client -- server, one link"

    def build(self) -> None:
        self.add_node("client", "client")
        self.add_node("server", "server")
        self.add_link("client", "server")


@register
class Middlebox(Topology):
    name = "middlebox"
    description = "client -- mb -- server; mb routes and hosts the middlebox model"

    def build(self) -> None:
        self.add_node("client", "client")
        self.add_node("mb", "middlebox")
        self.add_node("server", "server")
        self.add_link("client", "mb")
        self.add_link("mb", "server")


@register
class Chain(Topology):
    name = "chain"
    description = "client -- mb1 -- mb2 -- server; two middleboxes in series"

    def build(self) -> None:
        self.add_node("client", "client")
        self.add_node("mb1", "middlebox")
        self.add_node("mb2", "middlebox")
        self.add_node("server", "server")
        self.add_link("client", "mb1")
        self.add_link("mb1", "mb2")
        self.add_link("mb2", "server")


@register
class FanIn(Topology):
    name = "fanin"
    description = ("N clients -- router -- server (fanin:clients=N, default 3); router-server is "
                   "the bottleneck")
    bottleneck = "router-server"

    def __init__(
        self,
        path: PathShape | None = None,
        links: dict[str, LinkSpec] | None = None,
        clients: int = 3,
    ) -> None:
        if clients < 1:
            raise ValueError("fanin needs at least one client")
        self.n_clients = clients
        super().__init__(path, links)

    def build(self) -> None:
        self.add_node("router", "router")
        self.add_node("server", "server")
        for i in range(1, self.n_clients + 1):
            self.add_node(f"client{i}", "client")
            self.add_link(f"client{i}", "router")
        self.add_link("router", "server")
