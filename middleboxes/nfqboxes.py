"""Middleboxes whose packets must be changed in userspace: NFQUEUE + a packet model.

An ``NfqBox`` starts the runner (middleboxes/nfq.py) inside the node as an essential
helper, waits for ``ready``, then installs its rule ``... -j NFQUEUE --queue-num N``
in mangle FORWARD. There is deliberately no ``--queue-bypass``: with bypass a dead
runner turns the box into a silent pass-through and the run measures a path without its
middlebox; without it the kernel drops the queued packets, connections fail visibly, and
``Network.check()`` raises ProcessDiedError naming the box. Removal runs the other way:
rules first (nothing is queued to a stopping process), then SIGTERM, and the runner's
final counters are kept for ``counters()`` after removal.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, ClassVar

from middleboxes.base import Check, register
from middleboxes.helper import HelperBox, python_module
from middleboxes.iptables import Rule
from middleboxes.pktmodel import PACKET_MODELS, IsnRewrite, Tamper, create_model
from middleboxes.resegment import Resegment
from middleboxes.synboxes import DropSynData, ReplaySyn, StripSynData
from middleboxes.tlsboxes import Dpi443, Tls12Strict
from testbed.errors import ConfigError

# Queue numbers are per network namespace; distinct numbers per process keep two boxes
# on one node apart.
_QUEUES = itertools.count(100)


class NfqBox(HelperBox):
    """Subclasses name their packet model; ``match`` selects the packets to queue."""

    model: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        create_model(self.model, dict(self.params))  # refuse bad values before any install
        self.queue = next(_QUEUES) % 65536

    def matches(self) -> list[tuple[str, ...]]:
        return [("-p", "tcp")]

    def rules(self) -> list[Rule]:
        target = ("-j", "NFQUEUE", "--queue-num", str(self.queue))
        return [Rule("mangle", (*match, *target)) for match in self.matches()]

    def argv(self, stats: Path) -> list[str]:
        return python_module("middleboxes.nfq", "--model", self.model,
                             "--params", json.dumps(self.params), "--queue", str(self.queue),
                             "--stats", str(stats))


@register
class IsnRewriteBox(NfqBox):
    name = "isn-rewrite"
    model = IsnRewrite.name
    defaults: ClassVar[dict[str, Any]] = dict(IsnRewrite.defaults)
    description = ("adds a per-flow offset to client->server sequence numbers and "
                   "translates ACKs and SACK blocks back; options pass untouched")
    evidence = ("Honda et al. IMC 2011 (docs/middlebox-evidence.md §1.1): middleboxes rewrite the "
                "ISN while passing unknown options unchanged, so options must not carry absolute "
                "sequence numbers; TCPExposure ChangeSeq*/ChangeIncomingSeq* tests")
    mechanism = "NFQUEUE (all TCP, mangle FORWARD) + raw-byte rewrite, no bypass"


@register
class ResegmentBox(NfqBox):
    name = "resegment"
    model = Resegment.name
    defaults: ClassVar[dict[str, Any]] = dict(Resegment.defaults)
    description = ("splits data segments into `split`-byte pieces (options copied, as TSO "
                   "does) and coalesces small ones for up to hold_ms")
    evidence = ("Honda et al. IMC 2011 (docs/middlebox-evidence.md §1.1): tcpcrypt fragile where "
                "resegmentation happens (NIC offload); TCPExposure Split*/Coalesce* tests; "
                "TSO copies options into every piece (MPTCP book); RFC 8041 (MPTCP survives "
                "split/coalesce, one HotMiddlebox'13 corner case)")
    mechanism = "NFQUEUE (all TCP) + raw bytes; pieces injected by raw socket, no bypass"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if not self.params["split"] and not self.params["coalesce"]:
            raise ConfigError("middlebox resegment: split=0 with coalesce off changes nothing",
                              "give split=N (bytes) or coalesce=true")


def port_matches(port: object) -> list[tuple[str, ...]]:
    """Both directions of one TCP port."""
    return [("-p", "tcp", "--dport", str(port)), ("-p", "tcp", "--sport", str(port))]


@register
class TamperBox(NfqBox):
    name = "tamper"
    model = Tamper.name
    defaults: ClassVar[dict[str, Any]] = dict(Tamper.defaults)
    description = ("flips one bit in a data payload with probability `rate` and fixes the "
                   "TCP checksum (only end-to-end integrity checks notice)")
    evidence = ("RFC 8041 / draft-bonaventure-mptcp-experience (docs/middlebox-evidence.md §1.3): "
                "MPTCP was designed for middleboxes that modify the payload; TCPExposure's HTTP "
                "header-change checks (§1.1)")
    mechanism = "NFQUEUE (TCP, optional port) + raw bytes, checksum recomputed, no bypass"

    def matches(self) -> list[tuple[str, ...]]:
        if not int(self.params["port"]):
            return [("-p", "tcp")]
        return port_matches(self.params["port"])


class PortBox(NfqBox):
    """Queues both directions of one port only; everything else stays in the kernel."""

    ranges: ClassVar[dict[str, Check]] = {"port": (1, 65535)}  # one real port, not "any"

    def matches(self) -> list[tuple[str, ...]]:
        return port_matches(self.params["port"])


@register
class Dpi443Box(PortBox):
    name = "dpi-443"
    model = Dpi443.name
    defaults: ClassVar[dict[str, Any]] = dict(Dpi443.defaults)
    description = ("resets flows to `port` whose first client bytes are not a TLS "
                   "ClientHello record (type 22, version 3.1-3.3, handshake type 1)")
    evidence = ("NGFW TLS inspection resets OpenVPN over TCP/443 (Sophos SFOS, Cisco FTD "
                "guides); GFW forged RST+ACK on TCP/443, Aug 2025 (net4people/bbs#511); "
                "tcpcrypt's launcher never diverts 443 (docs/middlebox-evidence.md §2)")
    mechanism = "NFQUEUE (port only) + stream follower; forged RST+ACK both ways, no bypass"


@register
class Tls12StrictBox(PortBox):
    name = "tls12-strict"
    model = Tls12Strict.name
    defaults: ClassVar[dict[str, Any]] = dict(Tls12Strict.defaults)
    description = ("TLS 1.2-only inspection: kills (RST both ways) flows whose handshake "
                   "it cannot follow; TLS 1.3 passes only in middlebox compatibility mode")
    evidence = ("Blue Coat SGOS 6.5 vs Chrome 56, >30% of ~120,000 Chromebooks "
                "(docs/middlebox-evidence.md §2); Firefox Dec 2017: draft-18 2.91% failures vs "
                "TLS 1.2 1.58%, with compat changes 1.63%; boxes required CCS and session_id; RFC "
                "8446 appendix D.4")
    mechanism = "NFQUEUE (port only) + TLS 1.2 state table; RST+ACK both ways, no bypass"


# SYN segments only: data-carrying SYNs are rare and every other segment stays in the
# kernel. --syn matches SYN-only segments (client SYNs), the flag mask also SYN-ACKs.
ANY_SYN = ("-p", "tcp", "--tcp-flags", "SYN", "SYN")
TFO_EVIDENCE = ("RFC 7413 §7.1: 6% of probed paths dropped SYNs with data; Paasch (Apple), "
                "NANOG 67, 2016: ~20% of networks/sites with middlebox-induced TFO failures; "
                "Google IETF 84 tcpm: clients retry without data and blacklist the path "
                "(docs/middlebox-evidence.md §1.3)")


@register
class DropSynDataBox(NfqBox):
    name = "drop-syn-data"
    model = DropSynData.name
    defaults: ClassVar[dict[str, Any]] = dict(DropSynData.defaults)
    description = ("drops SYN and SYN-ACK segments that carry payload (TFO or SYN-data "
                   "TEPs); SYNs without data pass")
    evidence = TFO_EVIDENCE
    mechanism = "NFQUEUE (SYN-flagged TCP only, mangle FORWARD) + raw bytes, no bypass"

    def matches(self) -> list[tuple[str, ...]]:
        return [ANY_SYN]


@register
class StripSynDataBox(NfqBox):
    name = "strip-syn-data"
    model = StripSynData.name
    defaults: ClassVar[dict[str, Any]] = dict(StripSynData.defaults)
    description = ("forwards SYN and SYN-ACK segments without their payload (options kept, "
                   "lengths and checksums fixed): only the ISN gets acknowledged")
    evidence = ("no measured instance in docs/middlebox-evidence.md: the case RFC 7413 §4.2.2 "
                "provides for (a SYN-ACK that does not acknowledge the SYN data; the client sends "
                "it again after the handshake, no latency penalty) and the one RFC 8547 §4.7 must "
                "survive, made reproducible")
    mechanism = "NFQUEUE (SYN-flagged TCP only, mangle FORWARD) + raw bytes, no bypass"

    def matches(self) -> list[tuple[str, ...]]:
        return [ANY_SYN]


@register
class ReplaySynBox(NfqBox):
    name = "replay-syn"
    model = ReplaySyn.name
    defaults: ClassVar[dict[str, Any]] = dict(ReplaySyn.defaults)
    # A copy 0..60 s after the original (0: at once, a duplicate on the path); 1..100 copies.
    ranges: ClassVar[dict[str, Check]] = {"delay_ms": (0, 60_000), "copies": (1, 100)}
    description = ("forwards a client's SYN with data, then sends an exact copy `copies` "
                   "times, `delay_ms` apart, from the box to the same server")
    evidence = ("RFC 7413 §6.1: a duplicated SYN with data arriving after the server "
                "cleared the original state is delivered again (replay); RFC 8446 §8 "
                "(0-RTT anti-replay) and RFC 8548 §3.5 (resumption identifiers used once) "
                "are the defences an attacker on the path tests this way")
    mechanism = "NFQUEUE (SYN-only TCP, mangle FORWARD) + raw-socket copy, no bypass"

    def matches(self) -> list[tuple[str, ...]]:
        return [("-p", "tcp", "--syn")]


def packet_model_names() -> list[str]:
    """Packet models the runner knows, including tools that are not catalogue boxes."""
    return sorted(PACKET_MODELS)
