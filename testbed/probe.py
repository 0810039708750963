"""`tcpinc probe`: one network, one protocol, N connections, one JSON object each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import middleboxes
import topologies
from testbed.apps.transport import get_transport
from testbed.errors import ConfigError
from testbed.net.delayhelper import HelperChoice, effective_send_lead
from testbed.net.network import NetConfig, Network
from testbed.userinput import check_writable_dir
from testbed.workload import Workload, eno_datapath, run_workload
from topologies import PathShape

MAX_RESPONSE_SIZE = 1 << 30  # bytes; the client checks every byte it receives

# The keys every probe record starts with, stable for every protocol.
PROBE_KEYS = (
    "proto", "topology", "middlebox", "rtt_ms", "link_backend", "delay_helper", "outcome", "tep",
    "fallback_reason", "error", "session_id", "session_id_peer", "connect_ms", "ttfb_ms",
    "bytes_ok",
)


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    topology: str = "direct"
    path: PathShape = PathShape()
    proto: str = "plain"
    middlebox: str | None = None
    repeat: int = 1
    response_size: int = 1024
    link_backend: str = "auto"
    delay_helper: str = "auto"
    rx_steering: str = "off"  # NetConfig.rx_steering
    send_lead: str = "auto"  # NetConfig.send_lead
    seed: int = 1
    pcap_dir: Path | None = None
    policy: str | None = None  # ENO protocols: off | opportunistic | required
    keylog: bool = False  # key logs next to the pcap (needs pcap_dir; they hold secrets)
    # Plain-TCP applications through each host's transparent proxy, which speaks ``proto``
    # (an ENO arm, or ``plain`` for the proxies alone); testbed/transparent/.
    transparent: bool = False
    eno_datapath: str = "auto"  # ENO protocols: auto | bpf | nfqueue


def build_topology(cfg: ProbeConfig) -> topologies.Topology:
    topo = topologies.create(cfg.topology, path=cfg.path)
    if cfg.middlebox and not topo.middleboxes:
        raise ConfigError(
            f"topology {cfg.topology} has no middlebox node for {cfg.middlebox!r}",
            "use --topology middlebox (or chain)",
        )
    return topo


def probe(cfg: ProbeConfig) -> list[dict[str, Any]]:
    """Run the probe; records carry PROBE_KEYS first, then the workload's details."""
    _check_config(cfg)
    box = middleboxes.create(cfg.middlebox) if cfg.middlebox else None
    topo = build_topology(cfg)
    work = Workload(proto="plain" if cfg.transparent else cfg.proto, connections=cfg.repeat,
                    response_size=cfg.response_size,
                    policy=None if cfg.transparent else cfg.policy, keylog=cfg.keylog,
                    eno_datapath=cfg.eno_datapath)
    if not cfg.transparent and get_transport(cfg.proto, cfg.policy).uses_eno:
        eno_datapath(work)  # resolved (or refused) before any network is built
    net_cfg = NetConfig(link_backend=cfg.link_backend, delay_helper=cfg.delay_helper,
                        seed=cfg.seed, rx_steering=cfg.rx_steering,
                        send_lead=cfg.send_lead)
    with Network(topo, net_cfg) as net:
        if box is not None:
            box.install(net, topo.middleboxes[0])
        try:
            if cfg.pcap_dir:
                cfg.pcap_dir.mkdir(parents=True, exist_ok=True)
            pcap = cfg.pcap_dir / f"probe-{cfg.proto}.pcap" if cfg.pcap_dir else None
            if cfg.transparent:
                records = transparent_workload(net, cfg, work, pcap)
            else:
                records = run_workload(net, work, pcap=pcap)
            counters = box.counters() if box else None
        finally:
            if box is not None:
                box.remove()
        backend = net.backend
        helper = net.delay_helper
    return [_probe_record(cfg, record, backend, helper, counters) for record in records]


def _check_config(cfg: ProbeConfig) -> None:
    """Refuse a probe configuration before anything is built."""
    if cfg.repeat < 1:
        raise ConfigError(f"--repeat must be >= 1, got {cfg.repeat}")
    if cfg.keylog and cfg.pcap_dir is None:
        raise ConfigError("--keylog writes the key logs next to the capture",
                          "add --pcap-dir DIR")
    if not 1 <= cfg.response_size <= MAX_RESPONSE_SIZE:
        raise ConfigError(f"--response-size {cfg.response_size} is out of range",
                          f"give 1 to {MAX_RESPONSE_SIZE} bytes")
    if cfg.pcap_dir is not None:
        check_writable_dir(cfg.pcap_dir, "--pcap-dir")


def _probe_record(cfg: ProbeConfig, record: dict[str, Any], backend: str,
                  helper: HelperChoice, counters: Any) -> dict[str, Any]:
    """One probe record: PROBE_KEYS first, then the workload record's other keys."""
    head: dict[str, Any] = {
        "proto": cfg.proto, "topology": cfg.topology, "middlebox": cfg.middlebox,
        "rtt_ms": cfg.path.rtt_ms, "link_backend": backend,
        "delay_helper": helper.name,
    }
    if helper.note:
        head["delay_helper_note"] = helper.note
    head.update({k: record.get(k) for k in PROBE_KEYS if k not in head})
    head["rx_steering"] = cfg.rx_steering
    head["send_lead"] = effective_send_lead(cfg.send_lead, helper.name)
    head.update({k: v for k, v in record.items() if k not in head})
    if counters is not None:
        head["middlebox_counters"] = counters
    return head


def transparent_workload(net: Network, cfg: ProbeConfig, work: Workload,
                         pcap: Path | None) -> list[dict[str, Any]]:
    """The plain workload through both hosts' proxies; each record takes its outcome, TEP and
    session IDs from the proxies' records of that connection."""
    from testbed.transparent.host import ProxySpec, transparent
    from testbed.workload import SERVER_PORT

    policy = cfg.policy or ("off" if cfg.proto == "plain" else "opportunistic")
    client, server = net.topology.clients[0], net.topology.server
    specs = {client: ProxySpec(proto=cfg.proto, policy=policy),
             server: ProxySpec(proto=cfg.proto, policy=policy, listen_ports=(SERVER_PORT,))}
    with transparent(net, specs, eno_datapath=cfg.eno_datapath) as hosts:
        datapath = hosts[client].eno_datapath
        records = run_workload(net, work, pcap=pcap, client=client)
        for host in hosts.values():  # a record is written once the proxy closed that pair
            host.wait_idle()
        mine, theirs = hosts[client].records(), hosts[server].records()
    by_port = {int(r["app_local"].rsplit(":", 1)[1]): r for r in mine if r.get("app_local")}
    peers = {r.get("net_remote"): r for r in theirs}
    for record in records:
        proxy = by_port.get(record.get("local_port", -1))
        if proxy is None:
            record["transparent"] = "no proxy record"
            continue
        peer = peers.get(proxy.get("net_local"), {})
        outcome = proxy.get("outcome")
        record.update(
            transparent=True, eno_datapath=datapath,
            outcome="failed" if outcome == "failed" else outcome,
            tep=proxy.get("tep"), fallback_reason=proxy.get("fallback_reason"),
            session_id=proxy.get("session_id"), session_id_peer=peer.get("session_id"),
            proxy_established_ms=proxy.get("established_ms"), proxy_error=proxy.get("error"),
            proxy_ended=proxy.get("ended"))
    return records
