"""Theoretical time to first byte, in RTTs (docs/protocols.md §5).

``(send, resp)``: when the client may first send its request and when the first
response byte reaches it, counted from the SYN, for a client-speaks-first
request/response with zero server think time. Each entry names the row of that
table it comes from.
"""

from __future__ import annotations

THEORY_RTTS: dict[str, tuple[float, float]] = {
    "plain": (1.0, 2.0),  # Plain TCP, no TFO
    "plain-tfo": (0.0, 1.0),  # Plain TCP with TFO, cookie cached (RFC 7413 §3)
    "tcpcrypt": (2.0, 3.0),  # tcpcrypt fresh: Init1/Init2 after the TCP handshake
    "tcpcrypt-resume": (1.0, 2.0),  # tcpcrypt resumed: keys from ss[i], no Init1/Init2
    "tls": (2.0, 3.0),  # TLS 1.3 full (use-tls under ENO)
    "tls-resume": (2.0, 3.0),  # TLS 1.3 PSK resumption without early data
    "tls-0rtt": (1.0, 2.0),  # TLS 1.3 0-RTT (beyond the drafts under ENO)
    "tls-noeno": (2.0, 3.0),  # ordinary TLS 1.3 over TCP
    "tls-noeno-resume": (2.0, 3.0),
    "tls-noeno-0rtt": (1.0, 2.0),
    "tls-noeno-tfo": (1.0, 2.0),  # plain TLS + TFO: ClientHello in the SYN
    "tls-noeno-resume-tfo": (1.0, 2.0),
    "tls-noeno-0rtt-tfo": (0.0, 1.0),  # ClientHello + early data in the SYN
    # SYN data of the SYN TEP (RFC 8547 §4.7), beyond RFC 8548 / beyond the use-tls draft
    # (testbed/apps/proto_syn.py): the first handshake flight rides on the SYN and the server
    # answers right behind its SYN-ACK, before A's ACK.
    "tcpcrypt-syn": (1.0, 2.0),  # Init1 in the SYN, Init2 right after the SYN-ACK
    "tls-syn": (1.0, 2.0),  # ClientHello in the SYN
    "tls-0rtt-syn": (0.0, 1.0),  # ClientHello + early data in the SYN
    "tcpcrypt-resume-syn": (0.0, 1.0),  # request in the SYN under keys without nonce_b
}

# SYN-data rows of arms not built (THEORY_RTTS keys are registered arms, which tests iterate);
# every SYN-data arm of the theory is built now.
SYN_DATA_THEORY_RTTS: dict[str, tuple[float, float]] = {}


def send_ms(proto: str, rtt_ms: float) -> float | None:
    """When the theory lets the client send its request (None if no entry)."""
    entry = THEORY_RTTS.get(proto)
    return None if entry is None else entry[0] * rtt_ms


def ttfb_ms(proto: str, rtt_ms: float) -> float | None:
    """The theory line: first response byte after resp * RTT (None if no entry)."""
    entry = THEORY_RTTS.get(proto)
    return None if entry is None else entry[1] * rtt_ms
