"""The iptables rules that feed the ENO hook, and starting / stopping a hook in a host.

Only handshake-phase segments may reach userspace (docs/platform.md §3, §4): the rules
queue SYNs and SYN-ACKs, plus the first few packets of each connection in each direction by
conntrack's packet counter (connbytes), never bulk data:

* ``original`` direction, first ``original_window`` packets: the active opener's SYN, its
  third segment (which MUST carry ``45 02``, RFC 8547 §4.6) and early data (ENO rides on every
  segment until a non-SYN segment arrives, §4.6); at the passive end the same packets arrive
  and its hook judges the first ACK segment (§4.6 rule 1).
* ``reply`` direction, first ``reply_window`` packets: the passive opener's SYN-ACK and what
  follows it. Queueing them keeps a TFO server's early reply behind its queued SYN-ACK (one
  FIFO), the fix for the 200 ms stall of docs/platform.md §4; at the active end they
  tell the hook that a non-SYN segment arrived, so A stops sending ENO (§4.6).

Conntrack may reopen a reset connection's entry for a new connection on the same 4-tuple, with
the old counters; the hook zeroes them when it sees the new SYN (ctzero.py), so the windows
count from that SYN.

Every other segment among a connection's first ``order_window`` packets and ``order_bytes``
bytes is queued too, so none overtakes another on its way through the hook (marks.py: the
queue is one FIFO).

The queue target has ``--queue-bypass``: with no hook bound, segments pass untouched and ENO
simply never appears (the peer falls back, §4.6) instead of a black hole
(docs/platform.md §6.2). The rules live in private chains: two entry chains jumped to from
mangle OUTPUT and PREROUTING, the hold chain every queueing rule jumps to and the release
chain (marks.py), so removal is exact and the entry chains' counters show what the kernel
queued.

Install and removal are each one ``iptables-restore --noflush`` transaction per host (the
argv lists of ``install_commands`` / ``remove_commands`` as one script, ``restore_script``):
a host has all of the rules or none, and the hook's start and stop cost one iptables run
each instead of one per rule (middleboxes/iptables.py installs the boxes' rules the same way).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

from testbed.eno import marks
from testbed.eno.control import DEFAULT_NAME
from testbed.errors import CommandError
from testbed.net.network import Network, wait_for_line

TABLE = "mangle"
IPTABLES = ["iptables", "-w", "-t", TABLE]
CHAINS = {"OUTPUT": "TCPINC_ENO_OUT", "PREROUTING": "TCPINC_ENO_IN"}
# Chains only the entry chains jump to (marks.py), created first and removed last.
INNER_CHAINS = (marks.HOLD_CHAIN, marks.RELEASE_CHAIN)


@dataclass(frozen=True, kw_only=True)
class HookSpec:
    """How one host's hook runs."""

    queue: int = 0
    original_window: int = 5  # SYN, SYN retransmissions, third segment, early data
    reply_window: int = 3  # SYN-ACK and the passive opener's first segments after it
    # Packets and bytes (both directions) within which all of a connection's segments are
    # queued (marks.py: order).
    order_window: int = 32
    order_bytes: int = 16384
    name: str = DEFAULT_NAME
    expiry: float = 30.0
    mtu: int = 1500
    # Ports whose segments never enter the queue (the bench's no-hook baseline on one host).
    exclude_ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.queue <= 65535:
            raise ValueError(f"queue {self.queue} outside 0..65535")
        if self.original_window < 3 or self.reply_window < 1:
            raise ValueError("windows must cover at least the SYN, ACK and one data segment")
        if self.order_window < self.original_window + self.reply_window:
            raise ValueError("order_window must cover both windows")
        if self.order_bytes < 1:
            raise ValueError("order_bytes must be at least 1")


def _queue(spec: HookSpec) -> list[str]:
    return ["-j", "NFQUEUE", "--queue-num", str(spec.queue), "--queue-bypass"]


def chain_rules(spec: HookSpec) -> list[list[str]]:
    """The rules of each entry chain (the same for both directions): a segment back from the
    hook is released; SYNs, the windows and the rest of the order window go to the hold
    chain."""
    windows = (("original", spec.original_window), ("reply", spec.reply_window))
    hold = ["-j", marks.HOLD_CHAIN]
    rules = [marks.release_rule(), ["-p", "tcp", "--tcp-flags", "SYN", "SYN", *hold]]
    for direction, window in windows:
        # connbytes reads the connection's counter for ``direction`` whatever way the packet
        # goes, so --ctdir keeps each window to the packets of its own direction.
        rules.append(["-p", "tcp", "-m", "conntrack", "--ctdir", direction.upper(),
                      "-m", "connbytes", "--connbytes", f"0:{window}",
                      "--connbytes-dir", direction, "--connbytes-mode", "packets", *hold])
    return [*rules, marks.window_rule(spec.order_window, spec.order_bytes)]


def inner_rules(spec: HookSpec) -> dict[str, list[list[str]]]:
    """The rules of the hold and release chains (marks.py)."""
    return {marks.HOLD_CHAIN: marks.hold_rules(_queue(spec)),
            marks.RELEASE_CHAIN: marks.release_rules()}


def install_commands(spec: HookSpec) -> list[list[str]]:
    """iptables argv lists that install the rules (builder only, runs nothing)."""
    ipt = ["iptables", "-w", "-t", TABLE]
    cmds: list[list[str]] = []
    exclude = []
    if spec.exclude_ports:
        ports = ",".join(str(p) for p in spec.exclude_ports)
        exclude = ["-m", "multiport", "!", "--ports", ports]
    for chain, rules in inner_rules(spec).items():
        cmds.append([*ipt, "-N", chain])
        cmds += [[*ipt, "-A", chain, *rule] for rule in rules]
    for builtin, chain in CHAINS.items():
        cmds.append([*ipt, "-N", chain])
        cmds += [[*ipt, "-A", chain, *rule] for rule in chain_rules(spec)]
        cmds.append([*ipt, "-A", builtin, "-p", "tcp", *exclude, "-j", chain])
    return cmds


def remove_commands(listing: dict[str, str]) -> list[list[str]]:
    """Delete exactly the jump rules ``iptables -S <builtin>`` shows for our chains, then the
    chains, each flushed before any is deleted (builder: ``listing`` maps each built-in chain
    to its -S output, or to the table's, and ``"chains"``, if given, to the table's -S output:
    only the chains it shows are removed, so a half-made installation is removed too)."""
    ipt = ["iptables", "-w", "-t", TABLE]
    cmds: list[list[str]] = []
    for builtin, chain in CHAINS.items():
        for line in listing.get(builtin, "").splitlines():
            words = line.split()
            if words[:2] == ["-A", builtin] and words[-2:] == ["-j", chain]:
                cmds.append([*ipt, "-D", *words[1:]])
    chains = [*CHAINS.values(), *INNER_CHAINS]
    if "chains" in listing:
        chains = [c for c in chains if f"-N {c}" in listing["chains"].splitlines()]
    return cmds + [[*ipt, "-F", c] for c in chains] + [[*ipt, "-X", c] for c in chains]


def restore_script(cmds: list[list[str]]) -> str:
    """The ``iptables -w -t mangle`` argv lists ``cmds`` as one ``iptables-restore`` script
    for the table, in the same order (builder only). iptables-restore splits lines on
    whitespace and reads quotes and ``#``, so a word holding any of them is refused."""
    lines = [f"*{TABLE}"]
    for cmd in cmds:
        if cmd[:len(IPTABLES)] != IPTABLES:
            raise ValueError(f"not an iptables command on the {TABLE} table: {cmd}")
        words = cmd[len(IPTABLES):]
        bad = [w for w in words if not w or any(c.isspace() or c in "\"'#" for c in w)]
        if bad:
            raise ValueError(f"words iptables-restore would split or misread: {bad}")
        lines.append(" ".join(words))
    return "\n".join([*lines, "COMMIT", ""])


def _restore(net: Network, node: str, cmds: list[list[str]], what: str) -> None:
    """Run ``cmds`` in ``node`` as one transaction (all applied, or none)."""
    path = net.workdir / f"eno-rules-{node}-{what}.rules"
    path.write_text(restore_script(cmds))
    net.run(node, ["iptables-restore", "-w", "--noflush", str(path)])


def install_rules(net: Network, node: str, spec: HookSpec) -> None:
    """Install the rules in one transaction. If it fails, whatever of ours the host holds
    is removed before the error goes on (a run stopped mid-install, or a timeout that
    struck after the kernel had committed, leaves nothing)."""
    try:
        _restore(net, node, install_commands(spec), "install")
    except BaseException as exc:
        try:
            remove_rules(net, node)
        except CommandError as cleanup:  # the install's error stays the one raised
            exc.add_note(f"removing the rules after it failed too: {cleanup}")
        raise


def remove_rules(net: Network, node: str) -> None:
    """Remove every rule and chain of ours that the table shows, in one transaction (one
    listing of the table finds the jumps and the chains, so a half-made set goes too)."""
    table = net.run(node, [*IPTABLES, "-S"])
    cmds = remove_commands({**{builtin: table for builtin in CHAINS}, "chains": table})
    if cmds:
        _restore(net, node, cmds, "remove")


def rule_counters(net: Network, node: str) -> dict[str, list[int]]:
    """Packets each queueing rule of each entry chain sent to the queue, in rule order (the
    first rule, which releases segments back from the hook, is left out)."""
    out: dict[str, list[int]] = {}
    for chain in CHAINS.values():
        text = net.run(node, ["iptables", "-w", "-t", TABLE, "-L", chain, "-n", "-v", "-x"])
        rows = [line.split() for line in text.splitlines()[2:] if line.strip()]
        out[chain] = [int(row[0]) for row in rows][1:]
    return out


def queue_status(net: Network, node: str) -> dict[int, dict[str, int]]:
    """/proc/net/netfilter/nfnetlink_queue of the host: per queue, packets waiting, dropped
    and ``id_sequence`` (how many packets the kernel has queued in total)."""
    text = net.run(node, ["cat", "/proc/net/netfilter/nfnetlink_queue"])
    names = ("queue", "portid", "waiting", "copy_mode", "copy_range", "queue_dropped",
             "user_dropped", "id_sequence")
    out = {}
    for line in text.splitlines():
        values = [int(v) for v in line.split()[: len(names)]]
        row = dict(zip(names, values, strict=True))
        out[row["queue"]] = row
    return out


def hook_argv(spec: HookSpec, stats_out: Path | None = None, verbose: int = 0) -> list[str]:
    argv = [sys.executable, "-m", "testbed.eno.hook", "--queue", str(spec.queue),
            "--name", spec.name, "--expiry", str(spec.expiry), "--mtu", str(spec.mtu)]
    if stats_out is not None:
        argv += ["--stats-out", str(stats_out)]
    return argv + ["-v"] * verbose


def start_hook(
    net: Network, node: str, spec: HookSpec | None = None, stats_out: Path | None = None,
    log_path: Path | None = None, essential: bool = True,
) -> Popen[str]:
    """Start the hook in ``node`` (tracked by the network), then install its rules.

    The hook's stderr goes to ``log_path`` (default: a file in the network's work directory),
    never to an unread pipe that could fill up and block the packet path. ``essential``:
    a hook that dies fails the run (``Network.check``); False only for tests that kill it.
    """
    spec = spec or HookSpec()
    proc = launch_hook(net, node, spec, stats_out, log_path, essential)
    finish_hook(net, node, proc, spec)
    return proc


def launch_hook(
    net: Network, node: str, spec: HookSpec, stats_out: Path | None = None,
    log_path: Path | None = None, essential: bool = True,
) -> Popen[str]:
    """Start the hook process without waiting for it (``finish_hook`` does): several hooks
    and the server then import Python at the same time instead of one after the other."""
    log_path = log_path or net.workdir / f"eno-hook-{node}.log"
    with open(log_path, "a") as log:  # the child keeps its own descriptor
        return net.start_helper(node, f"eno-hook:{node}", hook_argv(spec, stats_out),
                                essential=essential, stderr=log)


def finish_hook(net: Network, node: str, proc: Popen[str], spec: HookSpec,
                timeout: float = 10.0) -> None:
    """Wait for a launched hook's ``ready`` line, then install its rules."""
    wait_for_line(proc, "ready", timeout, f"eno-hook:{node} in {node}")
    install_rules(net, node, spec)


def stop_hook(net: Network, node: str, proc: Popen[str]) -> None:
    """Remove the rules first (segments then pass untouched), then stop the process."""
    try:
        remove_rules(net, node)
    finally:
        net.stop_helper(proc)
