"""Middleboxes that terminate TCP: a split-TCP proxy and a TLS-intercepting proxy.

The node's kernel answers the client (nat PREROUTING REDIRECT to the proxy's port) and the
proxy process (middleboxes/proxy.py, an essential helper) connects to the original
destination on its own. Like the NFQUEUE boxes, a dead proxy is a visible failure:
redirected connections are refused by the node's kernel (nothing listens) and
``Network.check()`` raises ProcessDiedError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from middleboxes.base import register
from middleboxes.helper import HelperBox, python_module
from middleboxes.iptables import Rule


class ProxyBox(HelperBox):
    mode: ClassVar[str] = "tcp"

    def rules(self) -> list[Rule]:
        port = int(self.params["port"])
        match = ("-p", "tcp", "--dport", str(port)) if port else ("-p", "tcp")
        return [Rule("nat", (*match, "-j", "REDIRECT", "--to-ports",
                             str(self.params["listen"])))]

    def argv(self, stats: Path) -> list[str]:
        return python_module("middleboxes.proxy", "--mode", self.mode,
                             "--listen", str(self.params["listen"]), "--stats", str(stats))


@register
class TcpProxy(ProxyBox):
    name = "tcp-proxy"
    mode = "tcp"
    defaults: ClassVar[dict[str, Any]] = {"port": 0, "listen": 15000}
    description = ("split-TCP proxy: terminates TCP on the box and opens its own "
                   "connection to the server (SYN options not carried); relays with "
                   "half-close. port 0 = every TCP port. Counters count connections")
    evidence = ("TCPExposure IndAck* tests and is_ack_indirect(): ACKs produced on the path "
                "(docs/middlebox-evidence.md §1.1), the sign of a box that terminates TCP; "
                "Honda et al.: many boxes forward only contiguous flows")
    mechanism = "kernel nat REDIRECT + proxy process (SO_ORIGINAL_DST), essential helper"


@register
class TlsMitm(ProxyBox):
    name = "tls-mitm"
    mode = "tls"
    defaults: ClassVar[dict[str, Any]] = {"port": 443, "listen": 15443}
    description = ("TLS-intercepting proxy: terminates TLS with its own generated key and "
                   "re-originates TLS to the server; both handshakes complete, but the "
                   "two sessions' exporter values (and so session IDs) differ")
    evidence = ("TLS-inspecting proxies and NGFWs: Blue Coat SGOS (Chrome 56, Feb 2017), "
                "Sophos SFOS and Cisco FTD TLS inspection guides; Cloudflare's "
                "tls13.mitm.watch checker (docs/middlebox-evidence.md §2)")
    mechanism = "kernel nat REDIRECT + pyOpenSSL proxy (own P-256 key), essential helper"
