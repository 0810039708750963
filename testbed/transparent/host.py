"""Transparent mode for hosts of a running network (the Python API).

``transparent(net, {"client": ProxySpec(...), "server": ProxySpec(listen_ports=(80,))})``
gives each ENO host its datapath (``eno_datapath``, as any run resolves it: ``auto`` is the
bpf program where the kernel takes it, testbed/eno/bpf; else, or when asked, the NFQUEUE hook,
testbed/eno/rules.py), starts the proxy (proxy.py, a helper of the network, so `tcpinc clean`
finds it by pid; on bpf it starts inside the host's program cgroup), then installs the
diversion (rules.py); on exit, on every path, it removes the diversion first (the host's
traffic then flows as it would without the proxy) and stops the proxy, then the hook. The
program stays attached until the network stops (processes started meanwhile are in its
cgroup), as after any bpf run.

A proxy that dies during a run is noticed by a watcher thread and handled as its policy
says, and recorded in ``TransparentHost.events``: ``opportunistic`` removes the diversion,
so the host's connections pass in plain TCP; ``required`` keeps it, so new connections are
refused (outgoing ones are redirected to a closed port, incoming ones are reset by the
``reject`` rule) rather than sent in clear.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any

from testbed.errors import ConfigError
from testbed.net.network import Network
from testbed.transparent import control, rules

POLICIES = ("off", "opportunistic", "required")


@dataclass(frozen=True, kw_only=True)
class ProxySpec:
    proto: str = "tcpcrypt"  # an ENO arm (testbed/apps/transport.py) or "plain" (no ENO)
    policy: str = "opportunistic"
    listen_ports: tuple[int, ...] = ()  # incoming connections to these ports are diverted
    redirect_port: int = 7690
    tproxy_port: int = 7691
    gid: int = 7690  # the proxy's group: its own connections are never diverted
    name: str = control.DEFAULT_NAME
    timeout: float = 10.0
    rt_priority: int = 1  # SCHED_FIFO priority of the proxy (options.set_realtime); 0: none

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown policy {self.policy!r}", f"choose from {POLICIES}")
        ports = (*self.listen_ports, self.redirect_port, self.tproxy_port)
        if not all(0 < p < 65536 for p in ports):
            raise ConfigError(f"port outside 1..65535 in {ports}", "give valid TCP ports")
        if not 0 <= self.rt_priority <= 99:
            raise ConfigError(f"rt_priority {self.rt_priority} outside 0..99",
                              "give a SCHED_FIFO priority, or 0 for none")
        if {self.redirect_port, self.tproxy_port} & set(self.listen_ports):
            raise ConfigError("a listen port is one of the proxy's own ports",
                              "choose other --redirect-port / --tproxy-port")

    @property
    def uses_eno(self) -> bool:
        return self.proto != "plain" and self.policy != "off"

    def argv(self, records: Path) -> list[str]:
        return [sys.executable, "-m", "testbed.transparent.proxy", "--proto", self.proto,
                "--policy", self.policy, "--redirect-port", str(self.redirect_port),
                "--tproxy-port", str(self.tproxy_port),
                "--listen-ports", ",".join(str(p) for p in self.listen_ports),
                "--gid", str(self.gid), "--name", self.name, "--records", str(records),
                "--timeout", str(self.timeout), "--rt-priority", str(self.rt_priority)]

    def diversion(self) -> rules.Diversion:
        return rules.Diversion(gid=self.gid, redirect_port=self.redirect_port,
                               tproxy_port=self.tproxy_port, listen_ports=self.listen_ports,
                               required=self.policy == "required")


@dataclass
class TransparentHost:
    """One host's proxy: its process, records file and what happened to it."""

    net: Network
    node: str
    spec: ProxySpec
    proc: Popen[str]
    records_path: Path
    eno_datapath: str | None = None  # bpf | nfqueue, None without ENO
    events: list[dict[str, Any]] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _diverted: bool = True

    def records(self) -> list[dict[str, Any]]:
        """The proxy's per-connection records so far (written when a connection ends)."""
        if not self.records_path.exists():
            return []
        return [json.loads(line) for line in self.records_path.read_text().splitlines()
                if line.strip()]

    def wait_idle(self, wait: float = 10.0) -> None:
        """Until the proxy has ended every connection it accepted and written its record
        (it answers when that happens); TimeoutError after ``wait`` seconds."""
        out = self.net.run(self.node, [sys.executable, "-m", "testbed.transparent.control",
                                       "idle", str(wait), self.spec.name], timeout=wait + 10)
        reply = json.loads(out.strip().splitlines()[-1])
        if not reply.get("idle"):
            raise TimeoutError(f"proxy in {self.node} still has {reply.get('open')} "
                               f"connection(s) open after {wait:g} s")

    def watch(self) -> None:
        """Until stopped: act on the proxy's death as the policy says (module docstring)."""
        while not self._stopping.wait(0.2):
            if self.proc.poll() is None:
                continue
            action = "diversion kept: connections refused"
            if self.spec.policy != "required":
                self.undivert()
                action = "diversion removed: connections pass in plain TCP"
            self.events.append({"event": "proxy_died", "t": time.time(),
                                "returncode": self.proc.returncode, "action": action})
            return

    def undivert(self) -> None:
        with self._lock:
            if self._diverted:
                rules.remove(self.net, self.node)
                self._diverted = False


def start(net: Network, node: str, spec: ProxySpec,
          eno_datapath: str | None = None) -> TransparentHost:
    records = net.workdir / f"transparent-{node}.jsonl"
    records.unlink(missing_ok=True)
    log = net.workdir / f"transparent-{node}.log"
    with open(log, "a") as stderr:  # never an unread pipe on the data path
        proc = net.start_helper(node, f"transparent:{node}", spec.argv(records), ready="ready",
                                essential=False, stderr=stderr)
    host = TransparentHost(net, node, spec, proc, records, eno_datapath)
    try:
        rules.install(net, node, spec.diversion(), net.workdir)
    except BaseException:
        net.stop_helper(proc)
        raise
    threading.Thread(target=host.watch, daemon=True, name=f"watch-{node}").start()
    return host


def stop(host: TransparentHost) -> None:
    """Diversion off first (traffic then flows without the proxy), then the process."""
    host._stopping.set()
    try:
        host.undivert()
    finally:
        host.net.stop_helper(host.proc)


def resolve_datapath(spec: ProxySpec, requested: str | None) -> str:
    """The ENO datapath of a host in transparent mode: ``requested`` (None: the process
    default, the CLI's --eno-datapath) resolved as for any workload of the arm."""
    from testbed.workload import Workload, eno_datapath

    return eno_datapath(Workload(proto=spec.proto, eno_datapath=requested))


@contextlib.contextmanager
def transparent(net: Network, specs: dict[str, ProxySpec], hooks: bool = True,
                eno_datapath: str | None = None) -> Iterator[dict[str, TransparentHost]]:
    """Transparent mode on ``specs``' hosts for the duration of the block. ``hooks=False``:
    no ENO datapath at all (the proxies find none: fallback or refusal as the policy says)."""
    from testbed.eno.rules import HookSpec, start_hook, stop_hook

    started_hooks: list[tuple[str, Popen[str]]] = []
    hosts: dict[str, TransparentHost] = {}
    try:
        for node, spec in specs.items():
            chosen = None
            if hooks and spec.uses_eno:
                chosen = resolve_datapath(spec, eno_datapath)
                net.set_eno_bpf(node, chosen == "bpf")  # before the proxy starts
                if chosen == "nfqueue":
                    started_hooks.append((node, start_hook(net, node, HookSpec())))
            hosts[node] = start(net, node, spec, chosen)
        yield hosts
    finally:
        errors: list[BaseException] = []
        for host in hosts.values():
            try:
                stop(host)
            except Exception as exc:  # noqa: BLE001 - stop the others, then raise
                errors.append(exc)
        for node, proc in started_hooks:
            try:
                stop_hook(net, node, proc)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        if errors:
            raise errors[0]
