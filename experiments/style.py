"""One style registry: each protocol has the same colour, marker and label in every plot."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    label: str


STYLES: dict[str, Style] = {
    "plain": Style("#4d4d4d", "o", "plain TCP"),
    "plain-tfo": Style("#999999", "s", "plain TCP + TFO"),
    "tcpcrypt": Style("#1b9e77", "o", "tcpcrypt (fresh)"),
    "tcpcrypt-resume": Style("#66c2a5", "s", "tcpcrypt (resumed)"),
    "tls": Style("#d95f02", "o", "TCP-use-TLS (0x30, non-std)"),
    "tls-resume": Style("#fc8d62", "s", "TCP-use-TLS resumed [beyond draft]"),
    "tls-0rtt": Style("#e6ab02", "D", "TCP-use-TLS 0-RTT [beyond draft]"),
    "tls-noeno": Style("#7570b3", "o", "TLS 1.3, no ENO"),
    "tls-noeno-resume": Style("#a6a1d3", "s", "TLS 1.3 resumed, no ENO"),
    "tls-noeno-0rtt": Style("#e7298a", "D", "TLS 1.3 0-RTT, no ENO"),
    "tls-noeno-tfo": Style("#984ea3", "^", "TLS 1.3 + TFO, no ENO"),
    "tls-noeno-resume-tfo": Style("#c994c7", "v", "TLS 1.3 resumed + TFO, no ENO"),
    "tls-noeno-0rtt-tfo": Style("#f781bf", "P", "TLS 1.3 0-RTT + TFO, no ENO"),
}

_FALLBACK = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d"]


def style(proto: str) -> Style:
    if proto in STYLES:
        return STYLES[proto]
    index = sum(map(ord, proto)) % len(_FALLBACK)
    return Style(_FALLBACK[index], "^", proto)
