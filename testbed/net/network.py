"""A running network built from a topology description.

Theory of operation
-------------------
``Network(topology, config)`` is a context manager. On entry it asks the pure builder
(testbed/net/plan.py) for the network as data, then runs it: one host per node (a network
namespace held by an idle process, testbed/net/hosts.py; no switch, no controller, no shell per
host), every veth pair made at once by one ``ip -batch`` in the root namespace directly inside
its hosts, then each host configured by one shell chain inside it (sysctls, one ``ip -batch``
for links, addresses, neighbours and routes, ethtool), the hosts in parallel. A
shaped link under the userspace backend is two veth pairs with a transparent L2 shaper namespace
between them, running the delay line (the compiled testbed/net/delayline_c/ where built, see
testbed/net/delayhelper.py). Under the netem backend the shape is a netem qdisc on each end's
egress instead.

Addressing, routes, neighbours, sysctls and offloads are the plan's (see its docstring); the
sysctls are read back into ``sysctls`` for the run's metadata: what is recorded is what the
kernel holds.

Exit is guaranteed teardown: helper processes are stopped by pid (their exit codes and, for
delay lines, the delay they applied are collected), then the hosts' holders are killed and the
namespaces, with their veths, go. A state file (testbed/net/state.py) lets `tcpinc clean` finish
the job after a crash.
"""


from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from testbed.eno.bpf.attach import HostAttachment
from testbed.errors import ConfigError, KernelFeatureError, ProcessDiedError, present
from testbed.log import LOG
from testbed.net import delayhelper
from testbed.net.hosts import HostSet, NsHost, die_with_parent, spawn_hosts
from testbed.net.plan import (
    FORWARDING_ROLES,
    OFFLOAD_MODES,
    RECORDED_SYSCTLS,
    Interface,
    NetConfig,
    NetworkPlan,
    Steering,
    build_plan,
)
from testbed.net.procs import Helper, HostProcesses, wait_for_line
from testbed.net.shaping import choose_backend, netem_command
from testbed.net.state import NetworkState
from topologies.base import LinkDesc, Topology

__all__ = ["FORWARDING_ROLES", "OFFLOAD_MODES", "RECORDED_SYSCTLS", "Helper", "Interface",
           "NetConfig", "Network", "NsHost", "check_prerequisites", "die_with_parent",
           "wait_for_line"]

REQUIRED_BINARIES = ("mnexec", "ip", "tc", "sysctl", "ethtool")
SETUP_THREADS = 8
WORKDIR_PREFIX = "tcpinc-net-"


def check_prerequisites() -> None:
    """Refuse to start without root or without the binaries a network needs."""
    if os.geteuid() != 0:
        raise KernelFeatureError("emulated networks need root", "run as root (sudo)")
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
    if missing:
        raise KernelFeatureError(
            f"missing program(s): {', '.join(missing)}", "run `make setup` to install them"
        )


class Network(HostProcesses):
    """See the module docstring. Use as ``with Network(topo, cfg) as net: ...``."""

    def __init__(
        self, topology: Topology, config: NetConfig | None = None, workdir: Path | None = None
    ) -> None:
        super().__init__()
        self.topology = topology
        self.config = config or NetConfig()
        self.backend = ""
        self.delay_helper = delayhelper.HelperChoice("none")
        self.plan: NetworkPlan | None = None
        self.interfaces: dict[str, list[Interface]] = {}
        self.sysctls: dict[str, dict[str, str]] = {}
        self.link_reports: dict[str, dict[str, Any]] = {}
        self.timings: dict[str, float] = {}  # seconds per build step, for `tcpinc bench`
        self._mark = time.monotonic()
        self._own_workdir = workdir is None
        # Made in start(), after the root check: a refused start leaves no directory.
        self.workdir = Path(workdir) if workdir else Path(tempfile.gettempdir(), "tcpinc-net-?")
        self._made_workdir = False
        self._shaper_of: dict[str, str] = {}
        self._hosts: HostSet | None = None

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
        # The whole network as data first: a topology the plan refuses costs nothing.
        self._mark = time.monotonic()
        plan = self.plan = build_plan(self.topology, self.config, self.backend,
                                      helper=self.delay_helper.name)
        self.interfaces = plan.interfaces
        self._shaper_of = dict(plan.shaper_of)
        self._step("plan")
        self._hosts = spawn_hosts(list(plan.hosts))
        self.nodes = self._hosts.nodes
        state = present(self.state, "the network's state file")
        with state.deferred():
            launcher = self._hosts.launcher
            if launcher is not None:
                state.add_proc(launcher.pid, "", self._hosts.launcher_argv)
            for name, host in self.nodes.items():
                state.add_node(name, host.pid)
        self._step("hosts")
        # Every veth at once, made inside its two hosts' namespaces (no root-namespace names,
        # so networks built side by side never collide).
        pids = {name: host.pid for name, host in self.nodes.items()}
        done = subprocess.run(["ip", "-batch", "-"], input=plan.veth_batch(pids), text=True,
                              capture_output=True, check=False, timeout=60)
        if done.returncode != 0:
            raise KernelFeatureError(f"cannot create the veth pairs: {done.stderr.strip()}",
                                     "check `ip link add type veth` works as root")
        self._step("links")
        # Hosts are independent once their links exist: configure them concurrently.
        self._parallel(self._configure_host, list(plan.hosts))
        self._step("configure")
        self._apply_shaping()
        self._step("shaping")

    def _step(self, name: str) -> None:
        """Record how long the build step that ends now took (since the previous step)."""
        now = time.monotonic()
        self.timings[name] = now - self._mark
        self._mark = now

    def _configure_host(self, name: str) -> None:
        """The host's chain (plan.py ``HostPlan.script``) inside it, its ip lines on stdin."""
        host = present(self.plan, "the network's plan").hosts[name]
        out = self.nodes[name].execute(["sh", "-c", host.script("-")], stdin=host.batch_text())
        self.sysctls[name] = {key: " ".join(value.split()) for key, value in
                              zip(host.readback, out.splitlines(), strict=True)}

    @staticmethod
    def _parallel(fn: Callable[[Any], object], items: list[Any]) -> None:
        """``fn`` over ``items`` on SETUP_THREADS threads; the first exception is raised."""
        with ThreadPoolExecutor(max_workers=SETUP_THREADS) as pool:
            for _ in pool.map(fn, items):
                pass

    def stop(self) -> None:
        errors = self._stop_helpers()
        self._collect_link_reports()
        if self._hosts is not None:
            self._hosts.stop()
        for attachment in self.eno_bpf.values():
            errors.extend(f"bpf ENO datapath: {left}" for left in attachment.remove())
        self.eno_bpf.clear()
        self.eno_bpf_off.clear()
        if self.state is not None:
            self.state.remove()
            self.state = None
        if self._made_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._made_workdir = False
        if errors:
            raise ProcessDiedError("; ".join(errors), "see the run's log for its output")

    # -- settings and shaping ---------------------------------------------

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

    def _apply_shaping(self) -> None:
        shaped = [link for link in self.topology.links if not link.spec.is_identity]
        if self.backend == "netem":
            for link in shaped:
                self._apply_netem(link)
            return
        with present(self.state, "the network's state file").deferred():  # one write for all
            started = [(link.name, self._start_delay_line(link)) for link in shaped]
        # All delay lines start at once; each must be ready before traffic.
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
        """A shaped link's delay line, each worker on its CPU of the plan (plan.py: order)."""
        shaper = self._shaper_of[link.name]
        if_a, if_b = (i.name for i in self.interfaces[shaper])
        stats = self.workdir / f"delayline-{link.name}.json"
        cpus = self.line_cpus[link.name]
        if self.delay_helper.name == "c":
            # The helper asks for its own parent-death signal (main thread only: the kernel
            # sends it when the creating thread exits): no pre-exec hook, so Popen need not
            # fork this process (a hundred lines start in a fraction of the time).
            tie = threading.current_thread() is threading.main_thread()
            argv = delayhelper.c_argv(if_a, if_b, link.spec.a2b, link.spec.b2a,
                                      self.config.seed, stats, len(self._shaper_of),
                                      parent_pid=os.getpid() if tie else None,
                                      send_lead=self.config.send_lead, cpus=cpus)
            return self.start_helper(shaper, f"delayline:{link.name}", self._pinned(argv),
                                     preexec_fn=None)
        argv = [
            sys.executable, "-m", "testbed.net.delayline", "--if-a", if_a, "--if-b", if_b,
            "--a2b", json.dumps(link.spec.a2b.delayline_json()),
            "--b2a", json.dumps(link.spec.b2a.delayline_json()),
            "--seed", str(self.config.seed), "--stats", str(stats),
        ]
        # The Python line is one thread, on its one CPU.
        return self.start_helper(shaper, f"delayline:{link.name}",
                                 ["taskset", "-c", str(cpus[0]), *argv])

    @property
    def line_cpus(self) -> dict[str, list[int]]:
        """Shaped link -> the CPUs of its line's workers, as the plan placed them."""
        return self.plan.line_cpus if self.plan is not None else {}

    def _pinned(self, argv: list[str]) -> list[str]:
        """A compiled line's command, on the lines' CPU under receive steering (taskset execs
        it with that affinity, which its threads inherit; the pid stays the helper's)."""
        steering = self._steering
        if steering is None:
            return argv
        return ["taskset", "-c", str(steering.line_cpu), *argv]

    @property
    def _steering(self) -> Steering | None:
        return self.plan.steering if self.plan is not None else None

    # -- the bpf ENO datapath ----------------------------------------------

    def attach_eno_bpf(self, node: str) -> HostAttachment:
        """Give ``node`` the bpf ENO datapath: processes started in it from now on run in
        its own cgroup, to which the program is attached (raises KernelFeatureError)."""
        self.set_eno_bpf_hosts([node], True)
        return self.eno_bpf[node]

    def set_eno_bpf(self, node: str, on: bool) -> None:
        """The bpf ENO datapath on ``node`` (attached the first time), or off (for the nfqueue
        hook); see ``set_eno_bpf_hosts``."""
        self.set_eno_bpf_hosts([node], on)

    def set_eno_bpf_hosts(self, nodes: Iterable[str], on: bool) -> None:
        """On: each host's program is loaded and attached once per network, the hosts'
        loads side by side (the verifier takes about 0.3 s of CPU per load here), and a host
        whose datapath was turned off gets it back without a reload. Off: the host's
        processes started from now on stay out of its cgroup, so the program, still attached
        to the empty cgroup, sees none of their sockets and the nfqueue hook takes them;
        it is detached at teardown. A process still in the cgroup (started on the bpf
        datapath and still running) makes turning it off an error, as it would keep the
        program on its sockets."""
        nodes = list(dict.fromkeys(nodes))
        if not on:
            for node in nodes:
                attachment = self.eno_bpf.get(node)
                if attachment is None or node in self.eno_bpf_off:
                    continue
                members = attachment.members()
                if members:
                    raise KernelFeatureError(
                        f"cannot turn the bpf ENO datapath off in {node}: processes "
                        f"{', '.join(map(str, members))} still run in {attachment.cgroup}",
                        "stop the processes still running in the host")
                self.eno_bpf_off.add(node)
            return
        self.eno_bpf_off.difference_update(nodes)
        new = [node for node in nodes if node not in self.eno_bpf]
        if not new:
            return
        state = present(self.state, "the network's state file (is the network started?)")
        made = {node: HostAttachment.for_host(state.network_id, node) for node in new}
        for attachment in made.values():
            state.add_bpf(attachment.cgroup, attachment.pins)  # before anything exists
        failures: list[BaseException] = []

        def attach(node: str) -> None:
            try:
                made[node].attach()  # undoes itself if it fails
            except BaseException as exc:  # raised below, after the other hosts' loads
                failures.append(exc)
                return
            self.eno_bpf[node] = made[node]

        self._parallel(attach, new)
        if failures:
            raise failures[0]

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
                    # How late send calls started against their planned release (the due
                    # time, less the send lead after idleness): the fidelity check.
                    "lateness_p99_us": stats.get("lateness_us", {}).get("p99"),
                    **_device_figures(stats),
                }
            out[link.name] = entry
        return out

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
            "rx_steering": self._steering.record() if self._steering else {"mode": "off"},
            "send_lead": delayhelper.effective_send_lead(self.config.send_lead,
                                                         self.delay_helper.name),
            "line_cpus": self.line_cpus,
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


def _device_figures(stats: dict[str, Any]) -> dict[str, Any]:
    """The compiled line's device stamps (testbed/net/delayline_c/txstamp.c): when frames sent
    after idleness reached the device against their due time, and how many got there early."""
    stamps = stats.get("device_stamps")
    if not stamps:
        return {}
    late = stamps["device_lateness_us"]
    return {"device_lateness_median_us": late["median"], "device_lateness_p99_us": late["p99"],
            "device_stamped": stamps["stamped"], "early_frames": stamps["early"],
            "early_max_us": stamps["early_max_us"], "send_lead": stamps["send_lead"]}
