"""What a network is made of, as data: the pure builder behind ``Network``.

``build_plan(topology, config, backend)`` turns a topology description into a ``NetworkPlan``:
every host (topology nodes, plus one transparent shaper per shaped link under the userspace
backend), every veth pair with its names and MAC addresses, and per host the commands that
configure it: sysctls to write and read back, the ``ip -batch`` lines (links up, addresses,
permanent neighbours, routes), the interfaces whose offloads go off and, under
``rx_steering="rps"``, the interfaces' receive steering; and the CPUs of each delay line's
workers. Nothing here touches the
machine, so addressing and routing are unit-tested without root for every topology;
testbed/net/network.py runs a plan (one ``ip -batch`` in the root namespace creates every veth
directly inside its hosts' namespaces, then one shell chain per host, the hosts in parallel).

Addressing: link *i* (0-based, topology order) is 10.0.<i+1>.0/24, its first node .1, its
second .2. Endpoints get a default route through their neighbour when it forwards; forwarding
nodes get one static route per remote subnet (topologies are trees). MAC addresses are fixed by
the plan (locally administered, 02:00:00:..), so each end's permanent neighbour entry for its
peer is known before anything exists: no ARP exchange delays a measured SYN.

Delay lines and order: a frame sent into a veth waits on the sending CPU's input backlog until
that CPU's softirq (or, on a busy machine, its ksoftirqd) delivers it, so two frames sent in
order from two CPUs can reach the other end in the other order. Each line's worker keeps to one
CPU (``line_cpus``), so the line delivers a direction's frames in the order it sends them. A
host's own sends still come from several CPUs (the application's on one, those its incoming
ACKs clock out on another), so under load a host can reorder its frames before the line sees
them, as two CPUs feeding one NIC queue would not. Steering each shaper port's input to one CPU
(Receive Packet Steering) orders them, but the hop between CPUs then lands in a TCP frame's
delay: +30..+50 us of TCP connect() RTT error on the kernel's clock, ICMP unchanged (2-vCPU VM,
2026-12-03; presumably a TCP frame's arrival stamp is taken after the hop, an ICMP one
before), so the ports are not steered.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError, present
from testbed.net import delayhelper
from topologies.base import LinkDesc, Topology

# Read back into the metadata beside the ones the network sets. SYN retransmission timing
# decides what a dropped SYN costs (loss, fallback): newer kernels retransmit the first
# tcp_syn_linear_timeouts SYNs 1 s apart before doubling, older ones double from the start.
RECORDED_SYSCTLS = [
    "net.ipv4.tcp_congestion_control", "net.core.rmem_max", "net.core.wmem_max",
    "net.ipv4.tcp_timestamps", "net.ipv4.tcp_sack", "net.ipv4.tcp_window_scaling",
    "net.ipv4.tcp_syn_retries", "net.ipv4.tcp_synack_retries",
    *(["net.ipv4.tcp_syn_linear_timeouts"]
      if Path("/proc/sys/net/ipv4/tcp_syn_linear_timeouts").exists() else []),
]
OFFLOAD_MODES = ("wire", "gso")
# Receive steering: "off" delivers a frame into a host in the context of whoever sent it (for
# a shaped link, the delay line's send call: the receiving host's IP and TCP or UDP input runs
# on the line's CPU); "rps" pins the delay lines to one CPU and steers every host interface's
# input to the others (Receive Packet Steering, Documentation/networking/scaling.rst). rps
# frees the line's CPU for forwarding (on the 2-vCPU machine: 64-byte UDP from 300k to 500k
# packets/s without loss) and costs every delivered frame a hop between CPUs (about 15 us per
# frame there, 30 us per round trip), so it is for throughput, not for latency figures.
RX_STEERING_MODES = ("off", "rps")
# The compiled delay line's send lead (testbed/net/delayline_c/txstamp.c): "auto" starts a send
# that follows idleness early by the time the kernel's send path was measured to take to the
# device after such idleness, so the frame reaches the device at its due time; "off" starts
# it at the due time. The Python delay line has no send lead.
SEND_LEAD_MODES = ("auto", "off")
FORWARDING_ROLES = ("router", "middlebox")
SHAPER_ROLE = "shaper"
SHAPER_SYSCTLS = {"net.ipv6.conf.all.disable_ipv6": "1",
                  "net.ipv6.conf.default.disable_ipv6": "1"}


@dataclass(frozen=True, kw_only=True)
class NetConfig:
    """Network-wide settings; keyword-only, unknown keys refused by ``from_dict``."""

    link_backend: str = "auto"
    delay_helper: str = "auto"  # userspace backend: compiled (c) or Python delay line
    offloads: str = "wire"
    # None keeps the kernel's default (recorded); a namespace may only pick an
    # algorithm listed in the root namespace's tcp_allowed_congestion_control.
    congestion_control: str | None = None
    rx_steering: str = "off"  # RX_STEERING_MODES
    send_lead: str = "auto"  # SEND_LEAD_MODES
    tcp_fastopen: int = 3  # client and server TFO enabled (RFC 7413)
    tcp_rmem: str = "4096 131072 33554432"
    tcp_wmem: str = "4096 16384 33554432"
    tcp_ecn: int = 2
    ipv6: bool = False
    seed: int = 1
    extra_sysctls: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.offloads not in OFFLOAD_MODES:
            raise ConfigError(f"unknown offload mode {self.offloads!r}", f"use {OFFLOAD_MODES}")
        if self.rx_steering not in RX_STEERING_MODES:
            raise ConfigError(f"unknown receive steering {self.rx_steering!r}",
                              f"use {RX_STEERING_MODES}")
        if self.send_lead not in SEND_LEAD_MODES:
            raise ConfigError(f"unknown send lead {self.send_lead!r}", f"use {SEND_LEAD_MODES}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown network setting(s) {sorted(unknown)}", f"known: {known}")
        return cls(**data)


@dataclass
class Interface:
    node: str
    name: str
    ip: str | None = None  # "10.0.1.1/24"; shaper interfaces have none
    link: str = ""
    mac: str = ""


@dataclass
class HostPlan:
    """One host and the commands that configure it, in order."""

    name: str
    role: str  # a topology role, or "shaper"
    interfaces: list[Interface] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)  # written
    readback: list[str] = field(default_factory=list)  # read back (what the kernel holds)
    ip_batch: list[str] = field(default_factory=list)  # `ip -batch -` lines
    offloads_off: list[str] = field(default_factory=list)  # interfaces: TSO, GSO, GRO off
    rps_cpus: dict[str, str] = field(default_factory=dict)  # interface -> rx-0 rps_cpus mask

    def batch_text(self) -> str:
        return "".join(f"{line}\n" for line in self.ip_batch)

    def script(self, batch_file: str = "-") -> str:
        """The host's configuration as one ``sh -c`` chain, run inside the host.

        Sysctls are written with a shell builtin (no process per key); then
        ``ip -batch batch_file`` and one ``ethtool -K`` per interface whose offloads go off;
        then each steered interface's ``rps_cpus`` (the host's own sysfs); last, one ``cat``
        prints the read-back values, one line each in ``readback`` order.
        ``&&`` stops at the first failing step, whose stderr the runner reports.
        """
        steps = [f"printf %s {shlex.quote(value)} > {sysctl_file(key)}"
                 for key, value in self.sysctls.items()]
        steps.append(shlex.join(["ip", "-batch", batch_file]))
        steps += [shlex.join(["ethtool", "-K", intf, "tso", "off", "gso", "off", "gro", "off"])
                  for intf in self.offloads_off]
        steps += [f"printf %s {mask} > {shlex.quote(f'/sys/class/net/{intf}/queues/rx-0/rps_cpus')}"
                  for intf, mask in self.rps_cpus.items()]
        if self.readback:
            # One cat: each /proc/sys file reads as one line (the shell's `read` cannot: it
            # reads a byte at a time and sysctl files answer only a read at offset 0).
            steps.append(" ".join(["cat", *(sysctl_file(key) for key in self.readback)]))
        return " && ".join(steps)


@dataclass(frozen=True)
class Steering:
    """Where frames are handled under ``rx_steering="rps"``: the delay lines' CPU and the
    ``rps_cpus`` mask of the CPUs that run the hosts' input."""

    line_cpu: int
    input_cpus: tuple[int, ...]

    @property
    def mask(self) -> str:
        """The input CPUs as sysfs writes a cpumask: hex, 32-bit words separated by commas."""
        bits = sum(1 << cpu for cpu in self.input_cpus)
        words = []
        while True:
            words.append(f"{bits & 0xFFFFFFFF:08x}")
            bits >>= 32
            if not bits:
                break
        return ",".join(reversed(words)).lstrip("0") or "0"

    def record(self) -> dict[str, Any]:
        """What the network's description says of it."""
        return {"mode": "rps", "line_cpu": self.line_cpu, "input_cpus": list(self.input_cpus),
                "rps_cpus": self.mask}


def steering(cpus: Sequence[int] | None = None) -> Steering:
    """The lowest CPU this process may use carries the delay lines, the rest the hosts' input;
    ConfigError with fewer than two."""
    allowed = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if len(allowed) < 2:
        raise ConfigError(f"receive steering needs at least 2 CPUs, this process may use "
                          f"{len(allowed)}", "use rx_steering off (--rx-steering off)")
    return Steering(allowed[0], tuple(allowed[1:]))


def sysctl_file(key: str) -> str:
    """/proc/sys path of a sysctl key (``net.ipv4.ip_forward``), quoted for sh."""
    if not key or any(part in ("", ".", "..") for part in key.split(".")) or "/" in key:
        raise ConfigError(f"bad sysctl name {key!r}", "write it like net.ipv4.tcp_ecn")
    return shlex.quote("/proc/sys/" + key.replace(".", "/"))


@dataclass
class NetworkPlan:
    hosts: dict[str, HostPlan]
    veths: list[tuple[Interface, Interface]]
    shaper_of: dict[str, str]  # shaped link -> its shaper host (userspace backend)
    steering: Steering | None = None  # rx_steering="rps": lines' CPU and the input mask
    # shaped link -> the CPUs of its line's workers (the a2b worker's first; userspace backend)
    line_cpus: dict[str, list[int]] = field(default_factory=dict)

    @property
    def interfaces(self) -> dict[str, list[Interface]]:
        return {name: host.interfaces for name, host in self.hosts.items()}

    def veth_batch(self, pids: dict[str, int]) -> str:
        """``ip -batch`` lines for the root namespace: every veth pair made directly inside
        its two hosts' namespaces (named by the pid holding each), with the plan's MACs."""
        return "".join(
            f"link add name {a.name} netns {pids[a.node]} address {a.mac} type veth "
            f"peer name {b.name} netns {pids[b.node]} address {b.mac}\n"
            for a, b in self.veths
        )


def host_sysctls(role: str, config: NetConfig) -> dict[str, str]:
    cfg = config
    values = {
        "net.ipv4.ip_forward": "1" if role in FORWARDING_ROLES else "0",
        "net.ipv4.tcp_fastopen": str(cfg.tcp_fastopen),
        "net.ipv4.tcp_rmem": cfg.tcp_rmem,
        "net.ipv4.tcp_wmem": cfg.tcp_wmem,
        "net.ipv4.tcp_ecn": str(cfg.tcp_ecn),
        "net.ipv4.tcp_no_metrics_save": "1",
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.default.rp_filter": "0",
        "net.ipv6.conf.all.disable_ipv6": "0" if cfg.ipv6 else "1",
        "net.ipv6.conf.default.disable_ipv6": "0" if cfg.ipv6 else "1",
        **cfg.extra_sysctls,
    }
    if cfg.congestion_control:
        values["net.ipv4.tcp_congestion_control"] = cfg.congestion_control
    return values


class _Builder:
    def __init__(self, topology: Topology, config: NetConfig, backend: str) -> None:
        self.topology = topology
        self.config = config
        self.backend = backend
        self.hosts: dict[str, HostPlan] = {
            name: HostPlan(name, node.role) for name, node in topology.nodes.items()}
        self.veths: list[tuple[Interface, Interface]] = []
        self.shaper_of: dict[str, str] = {}
        self.steering: Steering | None = None
        self.line_cpus: dict[str, list[int]] = {}

    def veth(self, a: str, b: str, link: str) -> tuple[Interface, Interface]:
        ends: list[Interface] = []
        for node in (a, b):
            count = len(self.hosts[node].interfaces)
            serial = 2 * len(self.veths) + len(ends) + 1
            intf = Interface(node, f"{node}-eth{count}", link=link,
                             mac=f"02:00:00:{serial >> 16 & 0xff:02x}:{serial >> 8 & 0xff:02x}:"
                                 f"{serial & 0xff:02x}")
            self.hosts[node].interfaces.append(intf)
            ends.append(intf)
        pair = (ends[0], ends[1])
        self.veths.append(pair)
        return pair

    def add_link(self, index: int, link: LinkDesc) -> None:
        if self.backend == "userspace" and not link.spec.is_identity:
            shaper = f"sh{index}"
            self.hosts[shaper] = HostPlan(shaper, SHAPER_ROLE)
            self.shaper_of[link.name] = shaper
            ia, _ = self.veth(link.a, shaper, link.name)
            _, ib = self.veth(shaper, link.b, link.name)
        else:
            ia, ib = self.veth(link.a, link.b, link.name)
        ia.ip = f"10.0.{index + 1}.1/24"
        ib.ip = f"10.0.{index + 1}.2/24"

    def end(self, node: str, link: str) -> Interface:
        return next(i for i in self.hosts[node].interfaces if i.link == link)

    def place_lines(self, helper: str, cpus: Sequence[int]) -> None:
        """Each line's workers on CPUs of their own in turn (one worker for the Python line),
        all on the lines' CPU under receive steering (module docstring: order)."""
        for index, link in enumerate(self.shaper_of):
            if self.steering is not None:
                placed = [self.steering.line_cpu]
            else:
                placed = delayhelper.line_cpus(index, len(self.shaper_of), cpus)
            self.line_cpus[link] = placed if helper == "c" else placed[:1]

    def configure_host(self, host: HostPlan) -> None:
        if host.role == SHAPER_ROLE:
            # A shaper is a wire: no address, no IPv6 chatter, promiscuous interfaces.
            host.sysctls = dict(SHAPER_SYSCTLS)
            host.readback = list(SHAPER_SYSCTLS)
            host.ip_batch = [f"link set {i.name} up promisc on" for i in host.interfaces]
            return
        host.sysctls = host_sysctls(host.role, self.config)
        host.readback = list(dict.fromkeys([*host.sysctls, *RECORDED_SYSCTLS]))
        host.ip_batch = ["link set lo up"]
        for intf in host.interfaces:
            host.ip_batch.append(f"link set {intf.name} up")
            host.ip_batch.append(f"addr add {intf.ip} dev {intf.name}")
            # Lossy links always run without GSO so that loss applies to single packets.
            if self.config.offloads == "wire" or self.topology.link(intf.link).spec.lossy:
                host.offloads_off.append(intf.name)
            if self.steering is not None:
                host.rps_cpus[intf.name] = self.steering.mask

    def neighbours(self, link: LinkDesc) -> None:
        """Permanent ARP entries on a link, each end naming the other's address and MAC."""
        a, b = self.end(link.a, link.name), self.end(link.b, link.name)
        for mine, peer in ((a, b), (b, a)):
            ip = present(peer.ip, f"the address of {peer.node} on {link.name}")
            self.hosts[mine.node].ip_batch.append(
                f"neigh replace {ip.split('/')[0]} lladdr {peer.mac} dev {mine.name} "
                "nud permanent")

    def routes(self, name: str) -> None:
        topo = self.topology
        host = self.hosts[name]
        links = topo.neighbours(name)
        if len(links) == 1:
            peer, link = links[0]
            if topo.nodes[peer].role in FORWARDING_ROLES:
                host.ip_batch.append(f"route add default via {self.gateway(link.name, peer)}")
            return
        mine = {link.name for _, link in links}
        for index, remote in enumerate(topo.links):
            if remote.name in mine:
                continue
            first = topo.path(name, remote.a)[0]
            peer = first.b if first.a == name else first.a
            host.ip_batch.append(
                f"route add 10.0.{index + 1}.0/24 via {self.gateway(first.name, peer)}")

    def gateway(self, link: str, node: str) -> str:
        ip = present(self.end(node, link).ip, f"the address of {node} on {link}")
        return ip.split("/")[0]


def build_plan(topology: Topology, config: NetConfig, backend: str,
               cpus: Sequence[int] | None = None, helper: str = "c") -> NetworkPlan:
    """The whole network as data (see the module docstring); raises nothing but ConfigError
    (and InvariantError on a bug). ``cpus``: the CPUs the delay lines and receive steering may
    use (default: this process's affinity); ``helper``: the delay line that runs the shaped
    links ("c": a worker per direction in a small network; "python": one)."""
    if len(topology.links) > 254:
        raise ConfigError(f"topology {topology.name} has {len(topology.links)} links",
                          "the addressing plan (10.0.<link>.0/24) allows at most 254")
    builder = _Builder(topology, config, backend)
    if config.rx_steering == "rps":
        builder.steering = steering(cpus)
    for index, link in enumerate(topology.links):
        builder.add_link(index, link)
    builder.place_lines(helper, sorted(os.sched_getaffinity(0) if cpus is None else cpus))
    for host in builder.hosts.values():
        builder.configure_host(host)
    for link in topology.links:
        builder.neighbours(link)
    for name in topology.nodes:
        builder.routes(name)
    return NetworkPlan(builder.hosts, builder.veths, builder.shaper_of, builder.steering,
                       builder.line_cpus)
