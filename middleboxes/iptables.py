"""Middlebox models the kernel can do alone: iptables rules on the forwarding node.

Each model installs its rules in a chain of its own (``TCPINC_<n>``) jumped to
from FORWARD in the table it needs, so removal is exact and the rule counters
are the model's counters.
"""

from __future__ import annotations

from typing import ClassVar

from middleboxes.base import Middlebox, register


class IptablesBox(Middlebox):
    """Rules in one private chain; subclasses list (table, rule argv) pairs."""

    table: ClassVar[str] = "mangle"
    chain = "TCPINC_MB"

    def rules(self) -> list[list[str]]:
        raise NotImplementedError

    def _ipt(self, *args: str) -> str:
        assert self.net is not None
        return self.net.run(self.node, ["iptables", "-w", "-t", self.table, *args])

    def _install(self) -> None:
        self._ipt("-N", self.chain)
        self._ipt("-A", "FORWARD", "-j", self.chain)
        for rule in self.rules():
            self._ipt("-A", self.chain, *rule)

    def _remove(self) -> None:
        self._ipt("-D", "FORWARD", "-j", self.chain)
        self._ipt("-F", self.chain)
        self._ipt("-X", self.chain)

    def rule_packets(self) -> list[int]:
        """Packet counters of the chain's rules, in order."""
        out = self._ipt("-L", self.chain, "-n", "-v", "-x")
        rows = [line.split() for line in out.splitlines()[2:] if line.strip()]
        return [int(row[0]) for row in rows]


@register
class Passthrough(IptablesBox):
    name = "passthrough"
    description = "forwards everything unchanged (control); counts TCP packets"
    evidence = "the control arm: a path with no middlebox interference"

    def rules(self) -> list[list[str]]:
        return [["-p", "tcp", "-j", "RETURN"]]

    def counters(self) -> dict[str, int]:
        seen = self.rule_packets()[0] if self.net else 0
        return {"seen": seen, "changed": 0, "dropped": 0, "reset": 0}
