"""The network builder as data: addresses, routes, neighbours, sysctls and links of every
topology, checked without root (testbed/net/plan.py)."""

from __future__ import annotations

import ipaddress

import pytest

import topologies
from testbed.errors import ConfigError
from testbed.net import delayhelper
from testbed.net.plan import (
    RECORDED_SYSCTLS,
    SHAPER_ROLE,
    HostPlan,
    NetConfig,
    NetworkPlan,
    Steering,
    build_plan,
    steering,
)
from topologies import PathShape
from topologies.base import Topology

SPECS = ["direct", "middlebox", "chain", "fanin", "fanin:clients=100"]


def plan_of(spec: str, backend: str = "userspace", rtt: float = 20.0, **cfg: object) -> tuple[
        Topology, NetworkPlan]:
    topo = topologies.create(spec, path=PathShape(rtt_ms=rtt, loss=0.01 if rtt else 0.0))
    return topo, build_plan(topo, NetConfig(**cfg), backend)  # type: ignore[arg-type]


def lines(host: HostPlan, verb: str) -> list[list[str]]:
    return [line.split() for line in host.ip_batch if line.startswith(verb)]


def addr_of(plan: NetworkPlan, node: str, link: str) -> str:
    ip = next(i.ip for i in plan.hosts[node].interfaces if i.link == link)
    assert ip is not None
    return ip.split("/")[0]


def routed_next_hop(plan: NetworkPlan, node: str, dst: str) -> str | None:
    """The gateway ``node``'s routes (as planned) give for ``dst``, or None when on-link."""
    host = plan.hosts[node]
    target = ipaddress.ip_address(dst)
    for intf in host.interfaces:
        if intf.ip and target in ipaddress.ip_interface(intf.ip).network:
            return None
    best: tuple[int, str] | None = None
    for words in lines(host, "route add"):
        net = ipaddress.ip_network("0.0.0.0/0" if words[2] == "default" else words[2])
        if target in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, words[4])
    assert best is not None, f"{node} has no route to {dst}"
    return best[1]


def owner_of(plan: NetworkPlan, ip: str) -> str:
    return next(n for n, h in plan.hosts.items() for i in h.interfaces
                if i.ip and i.ip.split("/")[0] == ip)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("backend", ["userspace", "netem"])
def test_every_client_reaches_the_server_hop_by_hop(spec: str, backend: str) -> None:
    topo, plan = plan_of(spec, backend)
    server_ip = addr_of(plan, "server", topo.links[-1].name)
    for client in topo.clients:
        node, hops = client, 0
        while node != "server":
            gateway = routed_next_hop(plan, node, server_ip)
            node = "server" if gateway is None else owner_of(plan, gateway)
            hops += 1
            assert hops <= len(topo.links), f"routing loop from {client}"
        assert hops == len(topo.path(client, "server"))
        # ... and the way back from the server to the client's address.
        back_ip = addr_of(plan, client, topo.path(client, "server")[0].name)
        assert routed_next_hop(plan, "server", back_ip) is not None or len(topo.links) == 1


@pytest.mark.parametrize("spec", SPECS)
def test_addresses_one_subnet_per_link_and_neighbours_name_the_peer(spec: str) -> None:
    topo, plan = plan_of(spec)
    macs = [i.mac for h in plan.hosts.values() for i in h.interfaces]
    assert len(set(macs)) == len(macs)
    for index, link in enumerate(topo.links):
        a, b = (next(i for i in plan.hosts[n].interfaces if i.link == link.name)
                for n in (link.a, link.b))
        assert (a.ip, b.ip) == (f"10.0.{index + 1}.1/24", f"10.0.{index + 1}.2/24")
        for mine, peer in ((a, b), (b, a)):
            assert peer.ip is not None
            assert ["neigh", "replace", peer.ip.split("/")[0], "lladdr", peer.mac, "dev",
                    mine.name, "nud", "permanent"] in lines(plan.hosts[mine.node], "neigh")


@pytest.mark.parametrize("spec", SPECS)
def test_shapers_are_wires_between_the_ends_of_each_shaped_link(spec: str) -> None:
    topo, plan = plan_of(spec)
    assert sorted(plan.shaper_of) == sorted(link.name for link in topo.links)
    for link in topo.links:
        shaper = plan.hosts[plan.shaper_of[link.name]]
        assert shaper.role == SHAPER_ROLE and [i.ip for i in shaper.interfaces] == [None, None]
        assert shaper.ip_batch == [f"link set {i.name} up promisc on" for i in shaper.interfaces]
        assert shaper.sysctls["net.ipv6.conf.all.disable_ipv6"] == "1"
        peers = {(a.node, b.node) for a, b in plan.veths
                 if shaper.name in (a.node, b.node)}
        assert peers == {(link.a, shaper.name), (shaper.name, link.b)}
    _, unshaped = plan_of(spec, rtt=0.0)
    assert not unshaped.shaper_of and len(unshaped.veths) == len(topo.links)
    _, netem = plan_of(spec, backend="netem")
    assert not netem.shaper_of


@pytest.mark.parametrize("spec", SPECS)
def test_sysctls_offloads_and_read_back(spec: str) -> None:
    topo, plan = plan_of(spec, extra_sysctls={"net.ipv4.tcp_syn_retries": "3"},
                         congestion_control="reno")
    for name, node in topo.nodes.items():
        host = plan.hosts[name]
        forwarding = node.role in ("router", "middlebox")
        assert host.sysctls["net.ipv4.ip_forward"] == ("1" if forwarding else "0")
        assert host.sysctls["net.ipv4.tcp_syn_retries"] == "3"
        assert host.sysctls["net.ipv4.tcp_congestion_control"] == "reno"
        assert set(RECORDED_SYSCTLS) <= set(host.readback)
        assert host.offloads_off == [i.name for i in host.interfaces]
        assert host.batch_text() == "".join(f"{line}\n" for line in host.ip_batch)
    # gso mode keeps the kernel's offloads, except on lossy links (loss per packet).
    _, gso = plan_of(spec, rtt=20.0, offloads="gso")
    lossy = {link.name for link in topo.links if link.spec.lossy}
    for name in topo.nodes:
        assert set(gso.hosts[name].offloads_off) == {
            i.name for i in gso.hosts[name].interfaces if i.link in lossy}


def test_veth_batch_names_every_pair_in_its_hosts_namespaces() -> None:
    _, plan = plan_of("fanin:clients=100")
    pids = {name: 1000 + n for n, name in enumerate(plan.hosts)}
    text = plan.veth_batch(pids)
    assert len(text.splitlines()) == len(plan.veths) == 2 * 101
    first_a, first_b = plan.veths[0]
    assert text.splitlines()[0] == (
        f"link add name {first_a.name} netns {pids[first_a.node]} address {first_a.mac} "
        f"type veth peer name {first_b.name} netns {pids[first_b.node]} address {first_b.mac}")
    names = [i.name for h in plan.hosts.values() for i in h.interfaces]
    assert max(map(len, names)) <= 15  # IFNAMSIZ - 1


def test_too_many_links_for_the_address_plan_is_refused() -> None:
    with pytest.raises(ConfigError, match="255 links"):
        plan_of("fanin:clients=254")


@pytest.mark.parametrize("spec", SPECS)
def test_rx_steering_writes_every_host_interfaces_rps_mask(spec: str) -> None:
    topo = topologies.create(spec, path=PathShape(rtt_ms=20.0))
    plan = build_plan(topo, NetConfig(rx_steering="rps"), "userspace", cpus=[3, 0, 1])
    assert plan.steering == Steering(line_cpu=0, input_cpus=(1, 3))
    for name, host in plan.hosts.items():
        if host.role == SHAPER_ROLE:  # the line reads there: nothing to steer
            assert host.rps_cpus == {} and "rps_cpus" not in host.script()
            continue
        assert name in topo.nodes
        assert host.rps_cpus == {i.name: "a" for i in host.interfaces}
        intf = host.interfaces[0].name
        assert f"printf %s a > /sys/class/net/{intf}/queues/rx-0/rps_cpus" in host.script()
    assert plan.line_cpus and all(cpus == [0] for cpus in plan.line_cpus.values())
    off = build_plan(topo, NetConfig(), "userspace", cpus=[0, 1])
    assert off.steering is None
    assert all(not h.rps_cpus and "rps_cpus" not in h.script() for h in off.hosts.values())


@pytest.mark.parametrize("spec", SPECS)
def test_every_line_worker_has_a_cpu_of_its_own_in_turn(spec: str) -> None:
    """Order on the path (plan.py docstring): the lines' workers take the CPUs in turn (the
    a2b worker's first), one CPU for the Python line; no line under netem."""
    topo = topologies.create(spec, path=PathShape(rtt_ms=20.0))
    plan = build_plan(topo, NetConfig(), "userspace", cpus=[3, 1])
    shaped = [link.name for link in topo.links if not link.spec.is_identity]
    assert list(plan.line_cpus) == shaped
    for index, link in enumerate(shaped):
        assert plan.line_cpus[link] == delayhelper.line_cpus(index, len(shaped), [1, 3])
    python = build_plan(topo, NetConfig(), "userspace", cpus=[3, 1], helper="python")
    assert python.line_cpus == {link: cpus[:1] for link, cpus in plan.line_cpus.items()}
    assert build_plan(topo, NetConfig(), "netem", cpus=[3, 1]).line_cpus == {}


@pytest.mark.parametrize(("cpus", "mask"), [
    ((1,), "2"), ((1, 2, 3), "e"), ((33,), "2,00000000"), (tuple(range(1, 40)), "ff,fffffffe")])
def test_steering_mask_is_a_sysfs_cpumask(cpus: tuple[int, ...], mask: str) -> None:
    assert Steering(0, cpus).mask == mask


def test_steering_needs_two_cpus_and_a_known_mode() -> None:
    with pytest.raises(ConfigError, match="at least 2 CPUs, this process may use 1"):
        steering([5])
    with pytest.raises(ConfigError, match="unknown receive steering 'rss'"):
        NetConfig(rx_steering="rss")
