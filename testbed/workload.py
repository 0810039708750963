"""Run the request/response workload across a running network and collect records.

One call = one server process on the topology's server, a capture on the
client's and one on the server's interface (one tcpdump per interface, both on the
one host clock, so testbed/net/timesplit.py can pair them), and one client process
opening N connections; the result is the client's per-connection JSON records, each
tagged with both capture files and their kernel drop counts.

ENO protocols also get the ENO hook (testbed/eno/hook.py) on the client and the
server host for the duration of the run, and the server's per-connection view
(outcome, fallback reason, session ID) is merged into each client record as
``session_id_peer`` and ``peer_*``; so is that of non-ENO protocols with session IDs
(ordinary TLS, whose transport says ``session_ids``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

from testbed import keylog
from testbed.apps.priority import raise_process
from testbed.apps.proto_syn import SYN_ARMS
from testbed.apps.transport import get_transport
from testbed.eno.bpf.attach import resolve as resolve_datapath
from testbed.eno.rules import HookSpec, finish_hook, launch_hook, stop_hook
from testbed.errors import ConfigError, ProcessDiedError, present
from testbed.net.capture import Capture, Captures, CaptureStats
from testbed.net.network import Network, wait_for_line

LOG = logging.getLogger("tcpinc.workload")

SERVER_PORT = 5000


@dataclass(frozen=True, kw_only=True)
class Workload:
    proto: str = "plain"
    connections: int = 1
    concurrency: int = 1
    request_size: int = 12
    response_size: int = 1024
    timeout_s: float = 10.0
    gap_ms: float = 0.0
    policy: str | None = None  # ENO protocols: off | opportunistic | required
    # With a pcap: the client writes TLS and tcpcrypt key logs next to it (testbed/keylog.py;
    # they hold secrets and exist for analysis).
    keylog: bool = False
    # ENO protocols: "bpf" (testbed/eno/bpf) or "nfqueue" (testbed/eno/hook.py);
    # None: the process default (``set_eno_datapath``, the CLI's --eno-datapath)
    eno_datapath: str | None = None
    # > 0: client and server run under SCHED_FIFO at this priority, below the delay line's
    # (testbed/apps/priority.py); records say the policy each end got (``sched_policy``).
    rt_priority: int = 0


_DATAPATH = {"requested": "auto"}


def set_eno_datapath(requested: str) -> str:
    """The datapath ENO workloads use unless they name one; returns it resolved."""
    _DATAPATH["requested"] = requested
    return resolve_datapath(requested)


@contextmanager
def default_eno_datapath(requested: str) -> Iterator[str]:
    """``set_eno_datapath`` for a block (an experiment); the previous default after it."""
    old = _DATAPATH["requested"]
    try:
        yield set_eno_datapath(requested)
    finally:
        _DATAPATH["requested"] = old


def needs_hook(proto: str) -> str | None:
    """Why ``proto`` needs the NFQUEUE hook, or None. SYN data (RFC 8547 §4.7): the bpf
    program does not judge it. (tcpcrypt resumption runs on both: the bpf program answers
    from single-use answers pushed into a map, testbed/eno/bpf/datapath.py.)"""
    if proto in SYN_ARMS:
        return "SYN data, RFC 8547 §4.7"
    return None


def eno_datapath(work: Workload) -> str:
    """The resolved datapath of ``work`` (resolution is cached per process). ``auto`` runs
    arms the bpf datapath cannot serve on nfqueue; asking for bpf for them is an error."""
    requested = work.eno_datapath or _DATAPATH["requested"]
    resolved = resolve_datapath(requested)
    why = needs_hook(work.proto)
    if resolved == "bpf" and why:
        if requested == "bpf":
            raise ConfigError(f"{work.proto} needs the NFQUEUE hook ({why})",
                              "use --eno-datapath nfqueue (or auto)")
        return "nfqueue"
    return resolved


def run_workload(
    net: Network, work: Workload, pcap: Path | None = None, client: str | None = None,
    port: int = SERVER_PORT, eno_hooks: bool = True,
) -> list[dict[str, Any]]:
    """Run ``work`` from ``client`` (default: the first client) to the server.

    ``eno_hooks=False``: the caller runs the ENO hooks itself (tests that read their counters).
    """
    client = client or net.topology.clients[0]
    server = net.topology.server
    transport = get_transport(work.proto, work.policy)
    eno = transport.uses_eno
    # Protocols with session IDs but no ENO (ordinary TLS) also report the server's view.
    peer_view = eno or bool(getattr(transport, "session_ids", False))
    nodes = (client, server) if eno and eno_hooks else ()
    datapath = _choose_datapath(net, work, nodes) if eno else None
    hook_nodes = nodes if datapath == "nfqueue" else ()
    spec = HookSpec()
    hooks: list[tuple[str, Popen[str]]] = []
    installed: set[str] = set()  # hooks whose rules are in place
    hook_policy: list[str] = []

    def ready_hooks() -> None:
        for node, proc in hooks:
            finish_hook(net, node, proc, spec)
            installed.add(node)
            if work.rt_priority:  # the hook holds every handshake segment: an endpoint too
                hook_policy.append(raise_process(proc.pid, work.rt_priority))

    stats: dict[str, CaptureStats] = {}
    wanted = getattr(transport, "host_sysctls", None)
    restore = set_host_sysctls(net, {"client": client, "server": server}, wanted)
    try:
        # Launched first, waited for beside the server (_run): their start-up overlaps.
        for node in hook_nodes:
            hooks.append((node, launch_hook(net, node, spec)))
        records, server_view = _run(net, work, client, server, port, pcap, peer_view, stats,
                                    ready_hooks)
    finally:
        died = _stop_hooks(net, hooks, installed)
        for node, values in restore.items():
            net.set_sysctls(node, values)
    if died:
        _mark_helper_failure(records, died)
    _annotate(records, pcap, datapath, hook_policy, wanted, stats)
    if peer_view:
        merge_server_views(sorted(records, key=lambda r: r["t_start_wall"]), server_view)
    return records


def _choose_datapath(net: Network, work: Workload, nodes: tuple[str, ...]) -> str:
    """The run's ENO datapath, set on each host that runs a hook (before the server starts)."""
    datapath = eno_datapath(work)
    # Only the datapath asked for: a process in a host whose cgroup has the program would
    # take the bpf path whatever the run says. Both hosts' programs load side by side.
    net.set_eno_bpf_hosts(nodes, datapath == "bpf")
    return datapath


def _annotate(records: list[dict[str, Any]], pcap: Path | None, datapath: str | None,
              hook_policy: list[str], wanted: dict[str, dict[str, str]] | None,
              stats: dict[str, CaptureStats]) -> None:
    """What every record of the run says about the run: captures, datapath, hook policy."""
    for record in records:
        record["pcap"] = str(pcap) if pcap else None
        record["pcap_server"] = str(server_pcap(pcap)) if pcap else None
        record["eno_datapath"] = datapath
        if hook_policy:
            record["hook_sched_policy"] = ",".join(sorted(set(hook_policy)))
        if wanted:
            record["syn_sysctls"] = wanted
        for end in ("client", "server"):
            got = stats.get(end)
            record[f"capture_dropped_{end}"] = got.dropped if got else None


def set_host_sysctls(net: Network, nodes: dict[str, str],
                      wanted: dict[str, dict[str, str]] | None) -> dict[str, dict[str, str]]:
    """Set an arm's per-host sysctls (by role: client, server) for one run; returns the
    values to put back afterwards (experiments share one network across arms)."""
    restore: dict[str, dict[str, str]] = {}
    for role, values in (wanted or {}).items():
        node = nodes[role]
        net.record_sysctls(node, list(values))
        restore[node] = {k: net.sysctls[node][k] for k in values}
        net.set_sysctls(node, values)
    return restore


def _stop_hooks(net: Network, hooks: list[tuple[str, Popen[str]]],
                installed: set[str]) -> str | None:
    """Stop every hook; a hook that died is reported, not raised, so the records of the
    connections that ran come out with the failure (an exception in flight still wins)."""
    died: list[str] = []
    for node, proc in hooks:
        try:
            if node in installed:
                stop_hook(net, node, proc)
            else:  # no rules to remove: the run failed before they were installed
                net.stop_helper(proc)
        except ProcessDiedError as exc:
            died.append(str(exc))
    return "; ".join(died) or None


def _mark_helper_failure(records: list[dict[str, Any]], died: str) -> None:
    """Every record says a helper died during the run; an unfinished one says it in its
    error too, as the likely reason it did not finish."""
    for record in records:
        if record.get("helper_failure"):
            continue  # already said (the check after the client, then the hook's stop)
        record["helper_failure"] = died
        if not record.get("bytes_ok"):
            why = f"helper died during the run: {died}"
            record["error"] = f"{record['error']} ({why})" if record.get("error") else why


def server_pcap(pcap: Path) -> Path:
    """The server-side capture that goes with the client-side ``pcap``."""
    return pcap.with_name(f"{pcap.stem}-server{pcap.suffix}")


def _run(
    net: Network, work: Workload, client: str, server: str, port: int, pcap: Path | None,
    peer_view: bool, stats: dict[str, CaptureStats], ready_hooks: Callable[[], None],
) -> tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    argv = [sys.executable, "-m", "testbed.apps.server", "--port", str(port),
            "--proto", work.proto, "--request-size", str(work.request_size)]
    if work.policy is not None:
        argv += ["--policy", work.policy]
    if work.rt_priority:
        argv += ["--rt-priority", str(work.rt_priority)]
    server_records = net.workdir / f"server-records-{port}.jsonl"
    server_records.unlink(missing_ok=True)
    if peer_view:
        argv += ["--records", str(server_records)]
    env = _keylog_env(pcap) if work.keylog and pcap is not None else None
    # The server and the client import their modules while the hooks and the captures start;
    # the server listens once the hooks are up (--wait-go), the client opens its first
    # connection once the captures listen too (_run_client).
    server_proc = net.start_helper(server, f"server:{work.proto}", [*argv, "--wait-go"],
                                   stdin=subprocess.PIPE)
    client_proc = _start_client(net, work, client, server, port, env)
    captures: Captures | None = None
    try:
        if pcap is not None:
            # Server side first: its capture is listening before the client's first SYN.
            cap_s = Capture(net.nodes[server], net.intf(server), server_pcap(pcap))
            cap_c = Capture(net.nodes[client], net.intf(client), pcap)
            captures = Captures(cap_s, cap_c)
            captures.launch()
        ready_hooks()
        _release(server_proc)
        wait_for_line(server_proc, "ready", 10.0, f"server:{work.proto} in {server}")
        if captures is not None:
            with captures:
                records = _run_client(net, work, client_proc)
            for end, cap in (("client", cap_c), ("server", cap_s)):
                if cap.stats is not None:
                    stats[end] = cap.stats
        else:
            records = _run_client(net, work, client_proc)
    except BaseException as err:
        if captures is not None:  # launched, and the block that stops them never ran
            captures.abandon(err)
        raise
    finally:
        if client_proc.poll() is None:  # never released (the run failed first), or stuck
            client_proc.kill()
            client_proc.communicate()
        net.stop_helper(server_proc)
    return records, read_server_records(server_records)


def _release(proc: Popen[str]) -> None:
    """Send the line a server started with --wait-go waits for before it listens."""
    stdin = present(proc.stdin, "the server's stdin")
    try:
        stdin.write("go\n")
        stdin.close()
    except BrokenPipeError:
        # It died before it was released; wait_for_line, next, raises with its exit code
        # and stderr.
        LOG.warning("pid %d exited before it was released", proc.pid)


def read_server_records(path: Path) -> dict[int, list[dict[str, Any]]]:
    """The server's connections by client port, in order (a port may be used again once its
    previous connection is gone); a ``failed`` line updates the port's latest connection."""
    view: dict[int, list[dict[str, Any]]] = {}
    if not path.exists():
        return view
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        entries = view.setdefault(record["peer_port"], [])
        if record.pop("event", "setup") == "setup" or not entries:
            entries.append(record)
        else:
            entries[-1].update(record)
    return view


def merge_server_views(records: list[dict[str, Any]],
                       view: dict[int, list[dict[str, Any]]]) -> None:
    """Add the server's view of each connection: its session ID and its outcome.

    A connection is matched by the id of its first request where the server saw one
    (this survives proxies that re-originate TCP from another port), else by client port.
    """
    by_request = {e["request_id"]: e for entries in view.values() for e in entries
                  if e.get("request_id") is not None}
    used: dict[int, int] = {}
    for record in records:
        port = record.get("local_port")
        entries = view.get(port, []) if isinstance(port, int) else []
        index = used.get(port, 0) if isinstance(port, int) else 0
        if isinstance(port, int):
            used[port] = index + 1
        entry = by_request.get(record.get("conn"))
        if entry is None:
            entry = entries[index] if index < len(entries) else {}
        record["session_id_peer"] = entry.get("session_id")
        for key in ("outcome", "fallback_reason", "eno", "role", "error", "sched_policy"):
            record[f"peer_{key}"] = entry.get(key)


def _keylog_env(pcap: Path) -> dict[str, str]:
    """The client's environment with key logs next to ``pcap`` (stale ones removed first,
    as the capture itself is rewritten)."""
    names = keylog.environment(str(pcap.with_suffix("")))
    for path in names.values():
        Path(path).unlink(missing_ok=True)
    return {**os.environ, **names}


# The client process: its imports first, then its connections once a line "go" arrives on
# stdin (anything else, or none, exits 3 without a connection).
CLIENT_BOOT = ("import sys; import testbed.apps.client as app; "
               "sys.exit(app.main(sys.argv[1:]) if sys.stdin.readline() == 'go\\n' else 3)")


def _start_client(
    net: Network, work: Workload, client: str, server: str, port: int,
    env: dict[str, str] | None = None,
) -> Popen[str]:
    argv = [
        sys.executable, "-c", CLIENT_BOOT, "--server", net.ip(server),
        "--port", str(port), "--proto", work.proto,
        "--connections", str(work.connections), "--concurrency", str(work.concurrency),
        "--request-size", str(work.request_size), "--response-size", str(work.response_size),
        "--timeout", str(work.timeout_s), "--gap-ms", str(work.gap_ms),
    ]
    if work.policy is not None:
        argv += ["--policy", work.policy]
    if work.rt_priority:
        argv += ["--rt-priority", str(work.rt_priority)]
    options: dict[str, Any] = {"stdin": subprocess.PIPE, "text": True}
    return net.popen(client, argv, **options) if env is None \
        else net.popen(client, argv, env=env, **options)


def _run_client(net: Network, work: Workload, proc: Popen[str]) -> list[dict[str, Any]]:
    """Release the client started by ``_start_client`` and collect its records."""
    budget = work.connections * (work.timeout_s + 1) + 10
    out, err = proc.communicate(input="go\n", timeout=budget)
    try:
        net.check()
    except ProcessDiedError as exc:
        if proc.returncode != 0:
            raise
        # The client finished: its records come out, each saying what died meanwhile.
        records = [json.loads(line) for line in out.splitlines() if line.strip()]
        _mark_helper_failure(records, str(exc))
        return records
    if proc.returncode != 0:
        raise ProcessDiedError(f"client exited {proc.returncode}: {err.strip()[-500:]}")
    return [json.loads(line) for line in out.splitlines() if line.strip()]
