"""Middlebox models the kernel does alone, and the rule machinery every box uses
(the NFQUEUE and proxy boxes install their NFQUEUE / REDIRECT rules through it too).

Each box owns one chain per table it needs (``MB_<NAME>``, plus named sub-chains), jumped
to from that table's hook chain (FORWARD for filter and mangle, PREROUTING for nat).
Install and removal are each one ``iptables-restore --noflush`` transaction built as text
(``install_script`` / ``removal_script``, unit-tested without root), so a box is either
fully in place or not at all, and removal is exact: the rules of other boxes and of the
network stay untouched. The rule packet counters are the kernel models' counters.

Kernel models here:
- strip-eno-syn / -synack / -ack / -all: TCPOPTSTRIP of one option kind (69, RFC 8547),
  which overwrites the option with NOPs and fixes the checksum (docs/platform.md
  §3). The "ack" variant selects the first non-SYN segment the SYN sender sends
  with conntrack direction plus a connmark bit set on that segment.
- strip-unknown-options: TCPOPTSTRIP of every kind but the known ones.
- drop-syn-unknown-option / rst-syn-unknown-option: a SYN carrying any option kind not
  known is dropped, or answered with a RST by REJECT --reject-with tcp-reset.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

from middleboxes.base import Check, Middlebox, register, register_alias
from testbed.errors import ConfigError, present

HOOKS = {"filter": "FORWARD", "mangle": "FORWARD", "nat": "PREROUTING"}
KNOWN_DEFAULT = "2,3,4,5,8"  # MSS, window scale, SACK-permitted, SACK, timestamps
MAX_CHAIN = 28
ACK_MARK = 0x00400000  # connmark bit: "first non-SYN segment already seen"


@dataclass(frozen=True)
class Rule:
    """One rule: ``args`` appended to the box's chain in ``table`` (``sub``: a sub-chain)."""

    table: str
    args: tuple[str, ...]
    sub: str = ""


def chain_name(box: str, sub: str = "") -> str:
    """``MB_<BOX>[_<SUB>]``, shortened with a hash of the box name past 28 characters
    (iptables' limit, XT_EXTENSION_MAXNAMELEN - 1) so names stay unique per box."""
    base = "MB_" + re.sub(r"[^A-Z0-9]", "_", box.upper())
    tail = f"_{sub.upper()}" if sub else ""
    if len(base) + len(tail) <= MAX_CHAIN:
        return base + tail
    digest = f"{zlib.crc32(box.encode()) & 0xFFFF:04X}"
    keep = MAX_CHAIN - len(tail) - len(digest) - 1
    if keep < 4:
        raise ConfigError(f"sub-chain name {sub!r} too long for box {box!r}")
    return f"{base[:keep]}_{digest}{tail}"


def parse_kinds(text: str) -> list[int]:
    try:
        kinds = sorted({int(k) for k in str(text).replace(" ", "").split(",") if k})
    except ValueError:
        raise ConfigError(f"option kinds must be a comma list of integers, got {text!r}",
                          "e.g. known=2,3,4,5,8") from None
    if any(not 0 <= k <= 255 for k in kinds):
        raise ConfigError(f"option kinds must be 0..255, got {text!r}")
    return kinds


def unknown_kinds(known: str) -> list[int]:
    """Every option kind a box does not know; EOL and NOP are always known."""
    keep = set(parse_kinds(known)) | {0, 1}
    return [k for k in range(256) if k not in keep]


class IptablesBox(Middlebox):
    """Rules in private chains; subclasses implement ``rules``."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._final_counters = _counts()

    def rules(self) -> list[Rule]:
        raise NotImplementedError

    def chain(self, sub: str = "") -> str:
        return chain_name(self.name, sub)

    def chains(self) -> list[tuple[str, str]]:
        """(table, chain) of every chain the box creates, main chains first."""
        out: list[tuple[str, str]] = []
        for rule in self.rules():
            for item in ((rule.table, self.chain()), (rule.table, self.chain(rule.sub))):
                if item not in out:
                    out.append(item)
        return out

    def install_script(self) -> str:
        lines: dict[str, list[str]] = {}
        for table, chain in self.chains():
            lines.setdefault(table, []).append(f":{chain} - [0:0]")
        for table in lines:
            lines[table].append(f"-A {HOOKS[table]} -j {self.chain()}")
        for rule in self.rules():
            lines[rule.table].append(" ".join(("-A", self.chain(rule.sub), *rule.args)))
        return "".join(f"*{t}\n" + "\n".join(body) + "\nCOMMIT\n" for t, body in lines.items())

    def removal_script(self) -> str:
        tables: dict[str, list[str]] = {}
        for table, chain in self.chains():
            tables.setdefault(table, [f"-D {HOOKS[table]} -j {self.chain()}"])
            tables[table].append(f"-F {chain}")
        for table, chain in self.chains():
            tables[table].append(f"-X {chain}")
        return "".join(f"*{t}\n" + "\n".join(body) + "\nCOMMIT\n" for t, body in tables.items())

    def _restore(self, script: str, what: str) -> None:
        net = present(self.net, f"the network middlebox {self.name} is installed in")
        path = net.workdir / f"{self.chain()}-{what}.rules"
        path.write_text(script)
        net.run(self.node, ["iptables-restore", "-w", "--noflush", str(path)])

    def _install(self) -> None:
        self._restore(self.install_script(), "install")

    def _remove(self) -> None:
        self._restore(self.removal_script(), "remove")

    def rule_packets(self, table: str, sub: str = "") -> list[int]:
        """Packet counters of one chain's rules, in order."""
        net = present(self.net, f"the network middlebox {self.name} is installed in")
        out = net.run(self.node, ["iptables", "-w", "-t", table, "-L", self.chain(sub),
                                  "-n", "-v", "-x"])
        rows = [line.split() for line in out.splitlines()[2:] if line.strip()]
        return [int(row[0]) for row in rows]

    def counters(self) -> dict[str, int]:
        if self.net is None:
            return dict(self._final_counters)
        return self.kernel_counters()

    def kernel_counters(self) -> dict[str, int]:
        raise NotImplementedError

    def remove(self) -> None:
        if self.net is not None:
            # Rule counters vanish with the chains: keep the last values.
            self._final_counters = self.kernel_counters()
        super().remove()


def _counts(seen: int = 0, changed: int = 0, dropped: int = 0, reset: int = 0) -> dict[str, int]:
    return {"seen": seen, "changed": changed, "dropped": dropped, "reset": reset}


@register
class Passthrough(IptablesBox):
    name = "passthrough"
    description = "forwards everything unchanged (control); counts TCP packets"
    evidence = "the control arm: a path with no middlebox interference"
    mechanism = "kernel: one counting rule (mangle FORWARD)"

    def rules(self) -> list[Rule]:
        return [Rule("mangle", ("-p", "tcp"))]

    def kernel_counters(self) -> dict[str, int]:
        return _counts(seen=self.rule_packets("mangle")[0])


_ENO_EVIDENCE = (
    "Honda et al. IMC 2011 (docs/middlebox-evidence.md §1.1): unknown options removed from SYNs "
    "or data segments (TCPExposure SynOpt code 3, 'option removed'); MPTCP falls back when "
    "MP_CAPABLE is stripped from the SYN or DSS from data (RFC 8041). Kernel TCPOPTSTRIP writes "
    "NOPs in place (docs/platform.md §3)."
)


class StripEno(IptablesBox):
    """TCPOPTSTRIP of option ``kind`` on the selected segments; ``select`` is the match."""

    defaults: ClassVar[dict[str, Any]] = {"kind": 69}
    evidence = _ENO_EVIDENCE
    mechanism = "kernel: iptables TCPOPTSTRIP (mangle FORWARD)"
    select: ClassVar[tuple[str, ...]] = ()

    def _strip(self) -> tuple[str, ...]:
        kind = str(self.params["kind"])
        return ("-p", "tcp", *self.select, "--tcp-option", kind, "-j", "TCPOPTSTRIP",
                "--strip-options", kind)

    def rules(self) -> list[Rule]:
        return [Rule("mangle", ("-p", "tcp")), Rule("mangle", self._strip())]

    def kernel_counters(self) -> dict[str, int]:
        counts = self.rule_packets("mangle")
        return _counts(seen=counts[0], changed=counts[1])


@register
class StripEnoSyn(StripEno):
    name = "strip-eno-syn"
    description = "removes TCP-ENO (kind 69) from SYNs (without ACK) only"
    select = ("--tcp-flags", "SYN,ACK", "SYN")


@register
class StripEnoSynAck(StripEno):
    name = "strip-eno-synack"
    description = "removes TCP-ENO (kind 69) from SYN-ACKs only"
    select = ("--tcp-flags", "SYN,ACK", "SYN,ACK")


@register
class StripEnoAck(StripEno):
    name = "strip-eno-ack"
    description = ("removes TCP-ENO (kind 69) from the first non-SYN segment of the SYN "
                   "sender (the handshake's ACK)")
    mechanism = "kernel: TCPOPTSTRIP on conntrack ORIGINAL direction + a connmark bit"
    _first = ("--tcp-flags", "SYN", "NONE", "-m", "conntrack", "--ctdir", "ORIGINAL",
              "-m", "connmark", "--mark", f"0/{ACK_MARK:#x}")

    def rules(self) -> list[Rule]:
        kind = str(self.params["kind"])
        strip = ("-p", "tcp", *self._first, "--tcp-option", kind, "-j", "TCPOPTSTRIP",
                 "--strip-options", kind)
        # TCPOPTSTRIP does not end rule traversal, so the marking rule sees the segment
        # too and the connection's later segments no longer match.
        mark = ("-p", "tcp", *self._first, "-j", "CONNMARK", "--set-xmark",
                f"{ACK_MARK:#x}/{ACK_MARK:#x}")
        return [Rule("mangle", ("-p", "tcp")), Rule("mangle", strip), Rule("mangle", mark)]


@register
class StripEnoAll(StripEno):
    name = "strip-eno-all"
    description = "removes TCP-ENO (kind 69) from every segment"


register_alias("strip-eno", "strip-eno-all")


@register
class StripUnknownOptions(IptablesBox):
    name = "strip-unknown-options"
    description = ("normaliser: options other than MSS, WS, SACK-permitted, SACK and "
                   "timestamps become NOPs (checksum fixed) on every segment")
    evidence = ("Honda et al. IMC 2011 (docs/middlebox-evidence.md §1.1): boxes that remove "
                "unknown options from SYNs and data ('option removed'); tracebox (§1.2) "
                "localises such option deletions per hop. TCPOPTSTRIP on this kernel "
                "(docs/platform.md §3).")
    defaults: ClassVar[dict[str, Any]] = {"known": KNOWN_DEFAULT}
    ranges: ClassVar[dict[str, Check]] = {"known": parse_kinds}
    mechanism = "kernel: TCPOPTSTRIP of every unknown kind, one counting dispatch per kind"

    def rules(self) -> list[Rule]:
        unknown = unknown_kinds(self.params["known"])
        # One dispatch rule per unknown kind: its counter says how many segments carried
        # that kind, and after the jump the segment has none left, so no segment is
        # counted twice.
        rules = [Rule("mangle", ("-p", "tcp"))]
        rules += [Rule("mangle", ("-p", "tcp", "--tcp-option", str(k), "-j", self.chain("x")))
                  for k in unknown]
        strip = ",".join(str(k) for k in unknown)
        rules.append(Rule("mangle", ("-p", "tcp", "-j", "TCPOPTSTRIP", "--strip-options",
                                     strip), sub="x"))
        return rules

    def kernel_counters(self) -> dict[str, int]:
        counts = self.rule_packets("mangle")
        return _counts(seen=counts[0], changed=sum(counts[1:]))


class SynUnknownOption(IptablesBox):
    """SYNs go to a sub-chain holding one rule per unknown kind with ``verdict``."""

    defaults: ClassVar[dict[str, Any]] = {"known": KNOWN_DEFAULT}
    ranges: ClassVar[dict[str, Check]] = {"known": parse_kinds}
    verdict: ClassVar[tuple[str, ...]] = ()

    def rules(self) -> list[Rule]:
        rules = [Rule("filter", ("-p", "tcp", "--tcp-flags", "SYN,ACK", "SYN", "-j",
                                 self.chain("syn")))]
        rules += [Rule("filter", ("-p", "tcp", "--tcp-option", str(k), *self.verdict),
                       sub="syn") for k in unknown_kinds(self.params["known"])]
        return rules

    def hits(self) -> tuple[int, int]:
        syns = self.rule_packets("filter")[0]
        return syns, sum(self.rule_packets("filter", "syn"))


@register
class DropSynUnknownOption(SynUnknownOption):
    name = "drop-syn-unknown-option"
    description = "black hole: silently drops SYNs carrying an option kind it does not know"
    evidence = ("TCPExposure SynOpt code 1 'no reply' (docs/middlebox-evidence.md §1.1); MPTCP "
                "maintainers: packets with unknown options dropped in some places "
                "(mptcp_net-next#477); TFO SYN drops, ~20% of networks at Apple (NANOG 67), Linux "
                "TFO blackhole detection (commit cf1ef3f)")
    verdict = ("-j", "DROP")
    mechanism = "kernel: filter FORWARD, --tcp-option K -j DROP for each unknown K"

    def kernel_counters(self) -> dict[str, int]:
        syns, hits = self.hits()
        return _counts(seen=syns, dropped=hits)


@register
class RstSynUnknownOption(SynUnknownOption):
    name = "rst-syn-unknown-option"
    description = "answers SYNs carrying an option kind it does not know with a RST"
    evidence = ("TCPExposure SynOpt code 2 'RST' (docs/middlebox-evidence.md §1.1): the "
                "SYN-option test distinguishes a RST answer from no reply and from option removal")
    verdict = ("-j", "REJECT", "--reject-with", "tcp-reset")
    mechanism = "kernel: filter FORWARD, --tcp-option K -j REJECT --reject-with tcp-reset"

    def kernel_counters(self) -> dict[str, int]:
        syns, hits = self.hits()
        return _counts(seen=syns, dropped=hits, reset=hits)
