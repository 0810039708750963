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
}

_FALLBACK = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d"]


def style(proto: str) -> Style:
    if proto in STYLES:
        return STYLES[proto]
    index = sum(map(ord, proto)) % len(_FALLBACK)
    return Style(_FALLBACK[index], "^", proto)
