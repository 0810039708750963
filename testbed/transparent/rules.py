"""The netfilter rules that divert a host's TCP to its transparent proxy (proxy.py).

Builders only return argv lists and ruleset text; ``install`` / ``remove`` run them in a host.

* nft table ``ip tcpinc_transparent``:
  - ``divert_out`` (nat OUTPUT): every new outgoing TCP connection whose socket does not carry
    the proxy's group id, leaving on a real interface, is REDIRECTed to the proxy's
    ``redirect`` port (SO_ORIGINAL_DST gives the proxy the destination). Packets without a
    socket owner never match (``meta skgid`` breaks), and loopback is left alone, which is
    also how the proxy reaches a local application.
  - ``divert_in`` (filter PREROUTING at priority -140, after iptables mangle at -150, so the
    ENO hook's NFQUEUE rules see the SYN with its real destination port first): segments to
    the listen ports are handed to the proxy's transparent listener (``tproxy``), keeping
    their addresses. Under ``required`` a second rule resets what tproxy could not hand over
    (the proxy is gone): no plaintext reaches the application behind the proxy's back.
* iptables mangle chains ``TCPINC_TP_OUT`` / ``TCPINC_TP_IN``, inserted first in OUTPUT and
  PREROUTING: loopback segments and the diverted applications' own segments skip the rest of
  mangle (the ENO hook's queue): ENO is for the proxy's connections on the wire, and
  queueing the application-proxy hop over loopback would only add delay.

Removal deletes the table and exactly the jumps and chains added here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from testbed.net.network import Network

TABLE = "tcpinc_transparent"
MANGLE = "mangle"
CHAINS = {"OUTPUT": "TCPINC_TP_OUT", "PREROUTING": "TCPINC_TP_IN"}


@dataclass(frozen=True, kw_only=True)
class Diversion:
    """What one host diverts to which proxy ports."""

    gid: int
    redirect_port: int
    tproxy_port: int
    listen_ports: tuple[int, ...] = ()
    required: bool = False


def nft_ruleset(d: Diversion) -> str:
    lines = [
        f"table ip {TABLE} {{",
        "  chain divert_out {",
        "    type nat hook output priority -100; policy accept;",
        '    oifname "lo" return',
        f"    meta l4proto tcp meta skgid != {d.gid} redirect to :{d.redirect_port}",
        "  }",
    ]
    if d.listen_ports:
        ports = ", ".join(str(p) for p in d.listen_ports)
        lines += [
            "  chain divert_in {",
            "    type filter hook prerouting priority -140; policy accept;",
            '    iifname "lo" return',
            f"    tcp dport {{ {ports} }} tproxy to :{d.tproxy_port} accept",
        ]
        if d.required:
            lines.append(f"    tcp dport {{ {ports} }} reject with tcp reset")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def mangle_commands(d: Diversion) -> list[list[str]]:
    ipt = ["iptables", "-w", "-t", MANGLE]
    out, inc = CHAINS["OUTPUT"], CHAINS["PREROUTING"]
    return [
        [*ipt, "-N", out],
        [*ipt, "-A", out, "-o", "lo", "-j", "ACCEPT"],
        [*ipt, "-A", out, "-p", "tcp", "-m", "owner", "--socket-exists", "!", "--gid-owner",
         str(d.gid), "-j", "ACCEPT"],
        [*ipt, "-I", "OUTPUT", "1", "-p", "tcp", "-j", out],
        [*ipt, "-N", inc],
        [*ipt, "-A", inc, "-i", "lo", "-j", "ACCEPT"],
        [*ipt, "-I", "PREROUTING", "1", "-p", "tcp", "-j", inc],
    ]


def remove_commands(listing: dict[str, str]) -> list[list[str]]:
    """Delete the jumps ``iptables -S <builtin>`` shows for our chains, then the chains."""
    ipt = ["iptables", "-w", "-t", MANGLE]
    cmds: list[list[str]] = []
    for builtin, chain in CHAINS.items():
        text = listing.get(builtin, "")
        for line in text.splitlines():
            words = line.split()
            if words[:2] == ["-A", builtin] and words[-2:] == ["-j", chain]:
                cmds.append([*ipt, "-D", *words[1:]])
        if f"-N {chain}" in listing.get("chains", ""):
            cmds += [[*ipt, "-F", chain], [*ipt, "-X", chain]]
    return cmds


def install(net: Network, node: str, d: Diversion, workdir: Path) -> None:
    path = workdir / f"transparent-{node}.nft"
    path.write_text(nft_ruleset(d))
    try:
        for cmd in mangle_commands(d):
            net.run(node, cmd)
        net.run(node, ["nft", "-f", str(path)])
    except BaseException:
        remove(net, node)
        raise


def remove(net: Network, node: str) -> None:
    """Remove whatever of ours is there (every teardown path calls this)."""
    tables = net.run(node, ["nft", "list", "tables"])
    if f"ip {TABLE}" in tables:
        net.run(node, ["nft", "delete", "table", "ip", TABLE])
    ipt = ["iptables", "-w", "-t", MANGLE, "-S"]
    listing = {b: net.run(node, [*ipt, b]) for b in CHAINS}
    listing["chains"] = net.run(node, ipt)
    for cmd in remove_commands(listing):
        net.run(node, cmd)


def leftovers(net: Network, node: str) -> list[str]:
    """Our rules still present in ``node`` (empty after a clean teardown)."""
    found = []
    if f"ip {TABLE}" in net.run(node, ["nft", "list", "tables"]):
        found.append(f"nft table {TABLE}")
    mangle = net.run(node, ["iptables", "-w", "-t", MANGLE, "-S"])
    found += [line for line in mangle.splitlines() if "TCPINC_TP" in line]
    return found
