"""A running Mininet network built from a topology description.

Theory of operation
-------------------
``Network(topology, config)`` is a context manager. On entry it creates one
Mininet host (a network namespace held by an ``mnexec`` shell) per topology
node, with no switch, no controller and no Open vSwitch. Each topology link
becomes a veth pair; a shaped link under the userspace backend becomes two veth
pairs with a transparent L2 shaper namespace between them, running the delay
line (testbed/net/delayline.py). Under the netem backend the shape is a netem
qdisc on each end's egress instead.

Every link gets its own /24 (10.0.<link index + 1>.0/24: first node .1, second
.2); endpoints get a default route through their neighbour and forwarding nodes
get one static route per remote subnet (topologies are trees). Per-host sysctls
are set explicitly and read back into ``sysctls`` for the run's metadata.
Offloads: in ``wire`` mode TSO/GSO/GRO are off on every host interface, so each
frame on a link is one packet as on a physical wire; ``gso`` keeps the kernel's
defaults (faster bulk transfer, super-frames in captures). Lossy links always
run without GSO so that loss applies to single packets.

Exit is guaranteed teardown: helper processes are stopped by pid (their exit
codes and, for delay lines, the delay they applied are collected), then the
namespaces go. A state file (testbed/net/state.py) lets `tcpinc clean` finish the
job after a crash.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.eno.bpf.attach import HostAttachment
from testbed.errors import CommandError, ConfigError, KernelFeatureError, ProcessDiedError
from testbed.log import LOG
from testbed.net import delayhelper
from testbed.net.shaping import choose_backend, netem_command
from testbed.net.state import NetworkState
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
REQUIRED_BINARIES = ("mnexec", "ip", "tc", "sysctl", "ethtool", "ifconfig")
OFFLOAD_MODES = ("wire", "gso")
FORWARDING_ROLES = ("router", "middlebox")
SETUP_THREADS = 8


@dataclass(frozen=True, kw_only=True)
class NetConfig:
    """Network-wide settings; keyword-only, unknown keys refused by ``from_dict``."""

    link_backend: str = "auto"
    delay_helper: str = "auto"  # userspace backend: compiled (c) or Python delay line
    offloads: str = "wire"
    # None keeps the kernel's default (recorded); a namespace may only pick an
    # algorithm listed in the root namespace's tcp_allowed_congestion_control.
    congestion_control: str | None = None
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown network setting(s) {sorted(unknown)}", f"known: {known}")
        return cls(**data)


WORKDIR_PREFIX = "tcpinc-net-"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Resolved once in the parent: the child between fork and exec only calls it (no dlopen there).
_LIBC = ctypes.CDLL(None, use_errno=True)


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """In a child between fork and exec: SIGTERM when this process dies, even by SIGKILL.

    Helpers (delay lines, hooks, servers, boxes) then stop on their own after a killed run
    instead of holding its namespaces until `tcpinc clean` (prctl(2) PR_SET_PDEATHSIG; it
    survives the setns and exec of mnexec). A parent already gone before the prctl is caught
    by comparing the parent pid.
    """
    if _LIBC.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)


def _dying_host_class() -> Any:
    """Mininet's Host whose shell, the process that holds the host's namespace, is killed
    when this process dies (an interactive bash ignores SIGTERM, hence SIGKILL): a killed
    run then leaves no namespace behind. Processes started in the host get their own
    parent-death signal in ``Network.popen``."""
    from mininet.node import Host

    class DyingHost(Host):  # type: ignore[misc]
        def _popen(self, cmd: list[str], **params: Any) -> Any:
            if threading.current_thread() is threading.main_thread():
                params.setdefault("preexec_fn",
                                  functools.partial(die_with_parent, os.getpid(), signal.SIGKILL))
            return super()._popen(cmd, **params)

    return DyingHost


def check_prerequisites() -> None:
    """Refuse to start without root or without the binaries a network needs."""
    if os.geteuid() != 0:
        raise KernelFeatureError("emulated networks need root", "run as root (sudo)")
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
    if missing:
        raise KernelFeatureError(
            f"missing program(s): {', '.join(missing)}", "run `make setup` to install them"
        )


@dataclass
class Interface:
    node: str
    name: str
    ip: str | None = None  # "10.0.1.1/24"; shaper interfaces have none
    link: str = ""


@dataclass
class Helper:
    """A process the network started inside a host, stopped by pid at teardown."""

    node: str
    name: str
    proc: subprocess.Popen[str]
    essential: bool = True
    stopping: bool = False  # SIGTERM already sent by stop(): an exit now is not a death


class Network:
    """See the module docstring. Use as ``with Network(topo, cfg) as net: ...``."""

    def __init__(
        self, topology: Topology, config: NetConfig | None = None, workdir: Path | None = None
    ) -> None:
        self.topology = topology
        self.config = config or NetConfig()
        self.backend = ""
        self.delay_helper = delayhelper.HelperChoice("none")
        self.mn: Any = None
        self.nodes: dict[str, Any] = {}
        self.interfaces: dict[str, list[Interface]] = {}
        self.sysctls: dict[str, dict[str, str]] = {}
        self.helpers: list[Helper] = []
        # Every process started in a host: one-shot commands too, so that one abandoned by an
        # exception (an interrupted run, a timeout above it) is killed at teardown.
        self._procs: list[subprocess.Popen[str]] = []
        self.link_reports: dict[str, dict[str, Any]] = {}
        self.state: NetworkState | None = None
        self._own_workdir = workdir is None
        # Made in start(), after the root check: a refused start leaves no directory.
        self.workdir = Path(workdir) if workdir else Path(tempfile.gettempdir(), "tcpinc-net-?")
        self._made_workdir = False
        self._shaper_of: dict[str, str] = {}
        # bpf ENO datapath: host -> its cgroup and pinned program (testbed/eno/bpf/attach.py)
        self.eno_bpf: dict[str, HostAttachment] = {}

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Network:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        # Settings first: a link the delay line cannot honour is refused before anything exists.
        self.backend = choose_backend(self.config.link_backend)
        self._choose_delay_helper()
        check_prerequisites()
        if self._own_workdir:
            self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
            self._made_workdir = True
        # The state file names the work directory too, so `tcpinc clean` removes it after
        # a crash (it holds delay-line stats, hook logs and server records).
        self.state = NetworkState.create(workdir=self.workdir if self._own_workdir else None)
        try:
            self._build()
        except BaseException:
            self.stop()
            raise

    def _choose_delay_helper(self) -> None:
        """Resolve and check the delay helper before anything is built (refusals cost nothing)."""
        shaped = [link for link in self.topology.links if not link.spec.is_identity]
        if self.backend != "userspace" or not shaped:
            self.delay_helper = delayhelper.HelperChoice("none")
            return
        for link in shaped:
            delayhelper.check_shape(link.name, "a2b", link.spec.a2b)
            delayhelper.check_shape(link.name, "b2a", link.spec.b2a)
        self.delay_helper = delayhelper.resolve(self.config.delay_helper)
        if self.delay_helper.name == "python" and self.config.delay_helper == "auto":
            LOG.warning("delay helper: %s", self.delay_helper.note)

    def _build(self) -> None:
        from mininet.log import setLogLevel
        from mininet.net import Mininet

        setLogLevel("error")
        # Mininet.init() would raise root-namespace limits (fixLimits); this
        # project sets each host's sysctls explicitly instead.
        Mininet.inited = True
        self.mn = Mininet(
            topo=None, controller=None, switch=None, build=False, waitConnected=False,
            autoSetMacs=False,
        )
        for name in self.topology.nodes:
            self._add_host(name)
        for index, link in enumerate(self.topology.links):
            self._add_link(index, link)
        # Hosts are independent once their links exist: configure them concurrently (each step
        # is a short process inside one namespace; the build time of a 100-client fan-in is
        # mostly waiting for them).
        self._parallel(self._configure_host, list(self.topology.nodes))
        self._parallel(self._configure_shaper, list(self._shaper_of.values()))
        self._configure_routes()
        self._apply_shaping()

    @staticmethod
    def _parallel(fn: Callable[[Any], object], items: list[Any]) -> None:
        """``fn`` over ``items`` on SETUP_THREADS threads; the first exception is raised."""
        with ThreadPoolExecutor(max_workers=SETUP_THREADS) as pool:
            for _ in pool.map(fn, items):
                pass

    def stop(self) -> None:
        errors: list[str] = []
        # Applications and middleboxes first, newest first; then every delay line at once
        # (signalled together, then waited for: they are independent).
        lines = [h for h in self.helpers if h.name.startswith("delayline:")]
        for helper in reversed(self.helpers):
            if helper in lines:
                continue
            died = self._stop_helper(helper)
            if died:
                errors.append(died)
        for helper in lines:
            if helper.proc.poll() is None:
                helper.proc.send_signal(signal.SIGTERM)
                helper.stopping = True
        for helper in lines:
            died = self._stop_helper(helper)
            if died:
                errors.append(died)
        self.helpers.clear()
        self._kill_leftovers()
        self._collect_link_reports()
        if self.mn is not None:
            for node in self.mn.hosts:
                node.terminate()
            self.mn = None
        for attachment in self.eno_bpf.values():
            errors.extend(f"bpf ENO datapath: {left}" for left in attachment.remove())
        self.eno_bpf.clear()
        if self.state is not None:
            self.state.remove()
            self.state = None
        if self._made_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._made_workdir = False
        if errors:
            raise ProcessDiedError("; ".join(errors), "see the run's log for its output")

    # -- building ----------------------------------------------------------

    def _add_host(self, name: str) -> Any:
        node = self.mn.addHost(name, ip=None, cls=_dying_host_class())
        self.nodes[name] = node
        self.interfaces[name] = []
        assert self.state is not None
        self.state.add_node(name, node.pid)
        return node

    def _veth(self, a: str, b: str, link: str) -> tuple[Interface, Interface]:
        ia = Interface(a, f"{a}-eth{len(self.interfaces[a])}", link=link)
        ib = Interface(b, f"{b}-eth{len(self.interfaces[b])}", link=link)
        self.mn.addLink(self.nodes[a], self.nodes[b], intfName1=ia.name, intfName2=ib.name)
        self.interfaces[a].append(ia)
        self.interfaces[b].append(ib)
        return ia, ib

    def _add_link(self, index: int, link: LinkDesc) -> None:
        if self.backend == "userspace" and not link.spec.is_identity:
            shaper = f"sh{index}"
            self._add_host(shaper)
            self._shaper_of[link.name] = shaper
            ia, _ = self._veth(link.a, shaper, link.name)
            _, ib = self._veth(shaper, link.b, link.name)
        else:
            ia, ib = self._veth(link.a, link.b, link.name)
        ia.ip = f"10.0.{index + 1}.1/24"
        ib.ip = f"10.0.{index + 1}.2/24"

    def _configure_host(self, name: str) -> None:
        role = self.topology.nodes[name].role
        forwarding = role in FORWARDING_ROLES
        cfg = self.config
        values = {
            "net.ipv4.ip_forward": "1" if forwarding else "0",
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
        commands = [["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())],
                    ["ip", "link", "set", "lo", "up"]]
        for intf in self.interfaces[name]:
            commands.append(["ip", "link", "set", intf.name, "up"])
            if intf.ip:
                commands.append(["ip", "addr", "add", intf.ip, "dev", intf.name])
            lossy = self.topology.link(intf.link).spec.lossy
            if cfg.offloads == "wire" or lossy:
                commands.append(["ethtool", "-K", intf.name, "tso", "off", "gso", "off",
                                 "gro", "off"])
        # One process per host instead of one per step (a 100-client fan-in has ~200 hosts);
        # `&&` stops at the first failing step, whose stderr the CommandError carries. The
        # last step reads the sysctls back: what is recorded is what the kernel holds.
        keys = list(dict.fromkeys([*values, *RECORDED_SYSCTLS]))
        script = " && ".join(shlex.join(c) for c in [*commands, ["sysctl", "-n", *keys]])
        readback = self.run(name, ["sh", "-c", script]).splitlines()
        recorded = self.sysctls.setdefault(name, {})
        for key, value in zip(keys, readback, strict=True):
            recorded[key] = " ".join(value.split())

    def _configure_shaper(self, shaper: str) -> None:
        """A shaper is a wire: no address, no IPv6 chatter, promiscuous interfaces."""
        self.set_sysctls(shaper, {"net.ipv6.conf.all.disable_ipv6": "1",
                                  "net.ipv6.conf.default.disable_ipv6": "1"})
        for intf in self.interfaces[shaper]:
            self.run(shaper, ["ip", "link", "set", intf.name, "up", "promisc", "on"])

    def set_sysctls(self, node: str, values: dict[str, str]) -> None:
        args = [f"{k}={v}" for k, v in values.items()]
        self.run(node, ["sysctl", "-q", "-w", *args])
        self.record_sysctls(node, list(values))

    def record_sysctls(self, node: str, keys: list[str]) -> None:
        """Read the values back: what is recorded is what the kernel holds."""
        readback = self.run(node, ["sysctl", "-n", *keys]).splitlines()
        recorded = self.sysctls.setdefault(node, {})
        for key, value in zip(keys, readback, strict=True):
            recorded[key] = " ".join(value.split())

    def _static_neighbours(self, link: LinkDesc) -> None:
        """Permanent ARP entries on a link: no ARP exchange delays a measured SYN."""
        ends = [(link.a, self.intf(link.a, link.name)), (link.b, self.intf(link.b, link.name))]
        macs = [self.run(n, ["cat", f"/sys/class/net/{i}/address"]).strip() for n, i in ends]
        for (node, intf), (peer, _), mac in zip(ends, ends[::-1], macs[::-1], strict=True):
            self.run(node, ["ip", "neigh", "replace", self.link_ip(link.name, peer),
                            "lladdr", mac, "dev", intf, "nud", "permanent"])

    def _configure_routes(self) -> None:
        self._parallel(self._static_neighbours, list(self.topology.links))
        self._parallel(self._routes_of, list(self.topology.nodes))

    def _routes_of(self, name: str) -> None:
        topo = self.topology
        links = topo.neighbours(name)
        if len(links) == 1:
            peer, link = links[0]
            if topo.nodes[peer].role in FORWARDING_ROLES:
                self.run(name, ["ip", "route", "add", "default", "via",
                                self.link_ip(link.name, peer)])
            return
        mine = {link.name for _, link in links}
        for index, remote in enumerate(topo.links):
            if remote.name in mine:
                continue
            first = topo.path(name, remote.a)[0]
            peer = first.b if first.a == name else first.a
            subnet = f"10.0.{index + 1}.0/24"
            self.run(name, ["ip", "route", "add", subnet, "via",
                            self.link_ip(first.name, peer)])

    def _apply_shaping(self) -> None:
        started: list[tuple[str, subprocess.Popen[str]]] = []
        for link in self.topology.links:
            if link.spec.is_identity:
                continue
            if self.backend == "netem":
                self._apply_netem(link)
            else:
                started.append((link.name, self._start_delay_line(link)))
        # All delay lines start (import Python) at once; each must be ready before traffic.
        for name, proc in started:
            wait_for_line(proc, "ready", 10.0, f"delayline:{name} in {self._shaper_of[name]}")

    def _apply_netem(self, link: LinkDesc) -> None:
        for node, shape in ((link.a, link.spec.a2b), (link.b, link.spec.b2a)):
            intf = self.intf(node, link.name)
            self.run(node, netem_command(intf, shape))
            shown = self.run(node, ["tc", "qdisc", "show", "dev", intf])
            if "netem" not in shown:
                raise KernelFeatureError(f"netem not active on {intf}: {shown.strip()}")

    def _start_delay_line(self, link: LinkDesc) -> subprocess.Popen[str]:
        shaper = self._shaper_of[link.name]
        if_a, if_b = (i.name for i in self.interfaces[shaper])
        stats = self.workdir / f"delayline-{link.name}.json"
        if self.delay_helper.name == "c":
            argv = delayhelper.c_argv(if_a, if_b, link.spec.a2b, link.spec.b2a,
                                      self.config.seed, stats, len(self._shaper_of))
        else:
            argv = [
                sys.executable, "-m", "testbed.net.delayline", "--if-a", if_a, "--if-b", if_b,
                "--a2b", json.dumps(link.spec.a2b.delayline_json()),
                "--b2a", json.dumps(link.spec.b2a.delayline_json()),
                "--seed", str(self.config.seed), "--stats", str(stats),
            ]
        return self.start_helper(shaper, f"delayline:{link.name}", argv)

    def _kill_leftovers(self) -> None:
        """Kill processes started with ``popen`` that still run (nobody waits for them now)."""
        for proc in self._procs:
            if proc.poll() is None:
                LOG.warning("killing pid %d left running at teardown: %s", proc.pid, proc.args)
                proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    LOG.error("pid %d did not die on SIGKILL", proc.pid)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        self._procs.clear()

    # -- helpers (processes inside hosts) ---------------------------------

    def attach_eno_bpf(self, node: str) -> HostAttachment:
        """Give ``node`` the bpf ENO datapath: processes started in it from now on run in
        its own cgroup, to which the program is attached (raises KernelFeatureError)."""
        if node in self.eno_bpf:
            return self.eno_bpf[node]
        assert self.state is not None, "the network is not started"
        attachment = HostAttachment.for_host(self.state.network_id, node)
        self.state.add_bpf(attachment.cgroup, attachment.pins)  # before anything exists
        attachment.attach()
        self.eno_bpf[node] = attachment
        return attachment

    def set_eno_bpf(self, node: str, on: bool) -> None:
        """Attach the bpf ENO datapath to ``node``, or remove it (for the nfqueue hook)."""
        if on:
            self.attach_eno_bpf(node)
            return
        attachment = self.eno_bpf.pop(node, None)
        if attachment is not None:
            left = attachment.remove()
            if left:
                raise KernelFeatureError(f"cannot remove the bpf ENO datapath: {left}",
                                         "stop the processes still running in the host")

    def _in_host(self, node: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Popen arguments that start a process of ``node`` in the host's cgroup, if it has
        one: the child joins it before it execs (so no socket of it is ever made outside),
        through an fd opened here (the host's mount namespace has no cgroup2 mount)."""
        attachment = self.eno_bpf.get(node)
        if attachment is None:
            return kwargs
        fd = attachment.procs_fd()
        previous = kwargs.get("preexec_fn")

        def join() -> None:  # runs in the child between fork and exec: no locks, no I/O
            os.write(fd, b"0")  # "0": the writing process (cgroup v2 cgroup.procs)
            if previous is not None:
                previous()

        return {**kwargs, "preexec_fn": join}

    def popen(self, node: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start ``argv`` inside ``node``; the process is recorded for `tcpinc clean`."""
        LOG.info("[%s] start %s", node, shlex.join(argv))
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        if threading.current_thread() is threading.main_thread():
            # The kernel sends the death signal when the creating THREAD exits, so only the
            # main thread (which lives as long as this process) asks for it.
            kwargs.setdefault("preexec_fn", functools.partial(die_with_parent, os.getpid()))
        proc: subprocess.Popen[str] = self.nodes[node].popen(argv, **self._in_host(node, kwargs))
        self._procs = [p for p in self._procs if p.poll() is None]
        self._procs.append(proc)
        if self.state is not None:
            self.state.add_proc(proc.pid, node, argv)
        return proc

    def start_helper(
        self, node: str, name: str, argv: list[str], ready: str | None = None,
        timeout: float = 10.0, essential: bool = True, **kwargs: Any,
    ) -> subprocess.Popen[str]:
        """Start a long-running helper; with ``ready``, wait for that line on its stdout."""
        proc = self.popen(node, argv, **kwargs)
        helper = Helper(node, name, proc, essential)
        self.helpers.append(helper)
        if ready is not None:
            wait_for_line(proc, ready, timeout, f"{name} in {node}")
        return proc

    def stop_helper(self, proc: subprocess.Popen[str]) -> None:
        """Stop one helper now; raise ProcessDiedError if it had already died."""
        for helper in self.helpers:
            if helper.proc is proc:
                self.helpers.remove(helper)
                died = self._stop_helper(helper)
                if died:
                    raise ProcessDiedError(died)
                return
        raise ValueError(f"pid {proc.pid} is not a helper of this network")

    def _stop_helper(self, helper: Helper) -> str | None:
        proc = helper.proc
        died = proc.poll() is not None and helper.essential and not helper.stopping
        message = None
        if died:
            err = proc.stderr.read() if proc.stderr else ""
            message = f"{helper.name} in {helper.node} exited early ({proc.returncode}): " + (
                err.strip().splitlines()[-1] if err.strip() else "no output"
            )
        else:
            if not helper.stopping:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                LOG.warning("%s did not stop on SIGTERM; killing pid %d", helper.name, proc.pid)
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
        return message

    def check(self) -> None:
        """Raise if an essential helper (delay line, middlebox) has died."""
        for helper in self.helpers:
            if helper.essential and helper.proc.poll() is not None:
                raise ProcessDiedError(
                    f"{helper.name} in {helper.node} exited ({helper.proc.returncode})"
                )

    def _collect_link_reports(self) -> None:
        for link_name in self._shaper_of:
            path = self.workdir / f"delayline-{link_name}.json"
            if path.exists():
                self.link_reports[link_name] = json.loads(path.read_text())

    def applied_delay(self) -> dict[str, dict[str, Any]]:
        """Per shaped link and direction: the one-way delay the backend applied.

        For the userspace backend this is measured by the delay line per packet
        (median and p99 of send time minus receive time) with its drop counters;
        for netem it is the configured value (netem does not report it).
        """
        out: dict[str, dict[str, Any]] = {}
        for link in self.topology.links:
            if link.spec.is_identity:
                continue
            report = self.link_reports.get(link.name)
            entry: dict[str, Any] = {}
            for direction, shape in (("a2b", link.spec.a2b), ("b2a", link.spec.b2a)):
                if report is None:
                    entry[direction] = {"configured_ms": shape.delay_ms, "source": self.backend}
                    continue
                stats = report["directions"][direction]
                entry[direction] = {
                    "configured_ms": shape.delay_ms, "source": "measured",
                    "median_ms": stats["delay_ms"]["median"], "p99_ms": stats["delay_ms"]["p99"],
                    "frames": stats["frames"], "dropped_loss": stats["dropped_loss"],
                    "dropped_queue": stats["dropped_queue"], "dropped_tx": stats["dropped_tx"],
                    # How late frames left against their due time (fidelity check).
                    "lateness_p99_us": stats.get("lateness_us", {}).get("p99"),
                }
            out[link.name] = entry
        return out

    # -- commands ----------------------------------------------------------

    def run(self, node: str, argv: list[str], timeout: float = 30.0) -> str:
        """Run ``argv`` in ``node``, logged first; raise CommandError on failure."""
        LOG.debug("[%s] %s", node, shlex.join(argv))
        proc = self.nodes[node].popen(argv, **self._in_host(node, {
            "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}))
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise CommandError(argv, -1, f"timed out after {timeout}s {err}", node) from None
        if proc.returncode != 0:
            # Some tools (iperf3 -J) report their errors on stdout.
            raise CommandError(argv, proc.returncode, err.strip() or str(out)[-400:], node)
        return str(out)

    # -- queries -----------------------------------------------------------

    def intf(self, node: str, link: str | None = None) -> str:
        for intf in self.interfaces[node]:
            if link is None or intf.link == link:
                return intf.name
        raise ConfigError(f"{node} has no interface on link {link}")

    def link_ip(self, link: str, node: str) -> str:
        for intf in self.interfaces[node]:
            if intf.link == link and intf.ip:
                return intf.ip.split("/")[0]
        raise ConfigError(f"{node} has no address on link {link}")

    def ip(self, node: str) -> str:
        """The node's first address (endpoints have exactly one)."""
        return self.link_ip(self.interfaces[node][0].link, node)

    def describe(self) -> dict[str, Any]:
        """What ran, for metadata.json: backend, addresses, links, sysctls."""
        return {
            "topology": self.topology.name,
            "link_backend": self.backend,
            "delay_helper": self.delay_helper.name,
            "delay_helper_note": self.delay_helper.note,
            "offloads": self.config.offloads,
            "config": dataclasses.asdict(self.config),
            "interfaces": {
                n: [dataclasses.asdict(i) for i in intfs] for n, intfs in self.interfaces.items()
            },
            "links": {
                link.name: {"a": link.a, "b": link.b, "a2b": link.spec.a2b.to_dict(),
                            "b2a": link.spec.b2a.to_dict()}
                for link in self.topology.links
            },
            "sysctls": self.sysctls,
        }


def wait_for_line(proc: subprocess.Popen[str], expected: str, timeout: float, what: str) -> None:
    """Block until ``proc`` prints ``expected`` on stdout; raise with its stderr otherwise."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            raise ProcessDiedError(f"{what} not ready after {timeout:.0f}s")
        readable, _, _ = select.select([proc.stdout], [], [], remaining)
        if not readable:
            continue
        line = proc.stdout.readline()
        if line.strip() == expected:
            return
        if line == "":
            proc.wait()
            err = proc.stderr.read().strip() if proc.stderr else ""
            raise ProcessDiedError(f"{what} exited ({proc.returncode}) before ready: {err}")

