import pytest

import topologies
from testbed.errors import ConfigError
from topologies import PathShape
from topologies.shapes import LinkShape, LinkSpec


def test_registry_names():
    assert topologies.names() == ["chain", "direct", "fanin", "middlebox"]
    with pytest.raises(ConfigError, match="unknown topology"):
        topologies.create("ring")


@pytest.mark.parametrize(
    "name,nodes,links",
    [("direct", 2, 1), ("middlebox", 3, 2), ("chain", 4, 3), ("fanin", 5, 4)],
)
def test_shapes_of_each_topology(name, nodes, links):
    topo = topologies.create(name)
    assert len(topo.nodes) == nodes
    assert len(topo.links) == links
    assert topo.server == "server"
    for client in topo.clients:
        path = topo.path(client, topo.server)
        assert path[0].a == client or path[0].b == client


def test_rtt_split_evenly_and_loss_on_bottleneck():
    topo = topologies.create("chain", path=PathShape(rtt_ms=60, loss=0.01, rate_bps=10**7))
    delays = [link.spec.a2b.delay_ms for link in topo.links]
    assert delays == [10.0, 10.0, 10.0]
    assert sum(link.spec.a2b.delay_ms + link.spec.b2a.delay_ms for link in topo.links) == 60
    assert [link.spec.a2b.loss for link in topo.links] == [0.01, 0.0, 0.0]
    assert topo.links[0].spec.a2b.rate_bps == 10**7
    assert topo.links[1].spec.a2b.rate_bps is None


def test_fanin_bottleneck_is_shared_link():
    topo = topologies.create("fanin", path=PathShape(rtt_ms=20, rate_bps=10**6), clients=2)
    assert topo.link("router-server").spec.a2b.rate_bps == 10**6
    assert topo.link("client1-router").spec.a2b.rate_bps is None
    assert topo.link("client2-router").spec.a2b.delay_ms == 5.0


def test_per_link_override_and_unknown_link():
    spec = LinkSpec(a2b=LinkShape(delay_ms=3))
    topo = topologies.create("middlebox", links={"mb-server": spec})
    assert topo.link("mb-server").spec == spec
    with pytest.raises(ConfigError, match="no link"):
        topologies.create("direct", links={"nope": spec})


def test_fanin_client_count_in_the_name() -> None:
    topo = topologies.create("fanin:clients=5")
    assert len(topo.links) == 6 and "client5" in topo.nodes and "client6" not in topo.nodes


@pytest.mark.parametrize("spec, message", [
    ("fanin:n=8", "has no parameter(s) ['n']"),
    ("fanin:clients=0", "at least one client"),
    ("direct:clients=2", "topology direct has no parameter(s) ['clients']"),
    ("fanin:clients=x", "bad topology parameter 'clients=x'"),
    ("fanin:clients", "bad topology parameter 'clients'"),
])
def test_bad_topology_parameters_are_one_clear_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        topologies.create(spec)
    assert message in info.value.one_line()
