"""Link and path shapes: pure value types a topology describes (no process, no kernel).

A ``LinkShape`` says what one link does to packets in each direction: one-way delay, jitter,
loss, rate and queue limit; a ``LinkSpec`` holds both directions; a ``PathShape`` is the
end-to-end shaping a user states, which a topology splits over its links. They import nothing
from ``testbed.net`` (which realises them): topologies stay a description.

Numbers are checked where the value is made: a rate or queue must be a whole number (a float
with no fraction, as ``1e8`` from the Python API, is taken as that integer; anything else is a
``ConfigError``), so nothing malformed reaches a delay line.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from testbed.errors import ConfigError

_TIME_RE = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*$")
_RATE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)?\s*$", re.I)
_RATE_UNITS = {
    None: 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9,
    "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9,
}


def parse_time_ms(text: str | float | int) -> float:
    """'50ms' / '0.2s' / '300us' / 50 -> milliseconds. Negative values are refused."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = _TIME_RE.match(text)
        if not m:
            raise ConfigError(f"bad time {text!r}", "write it like 50ms, 0.2s or 300us")
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, None: 1.0}[m.group(2)]
        value = float(m.group(1)) * scale
    if value < 0:
        raise ConfigError(f"negative time {text!r}", "delays must be >= 0")
    return value


def parse_rate_bps(text: str | int) -> int:
    """'100mbit' / '1gbit' / '10mbps' (bytes) -> bits per second, tc's unit names."""
    if isinstance(text, int):
        value = float(text)
    else:
        m = _RATE_RE.match(text)
        if not m:
            raise ConfigError(f"bad rate {text!r}", "write it like 100mbit or 1gbit")
        unit = m.group(2).lower() if m.group(2) else None
        value = float(m.group(1)) * _RATE_UNITS[unit]
    if value <= 0:
        raise ConfigError(f"rate must be positive, got {text!r}", "omit --rate for no limit")
    return int(value)


def parse_loss(text: str | float) -> float:
    """'0.5%' or 0.5 (percent) -> fraction in [0, 1)."""
    raw = text.strip().rstrip("%") if isinstance(text, str) else text
    try:
        percent = float(raw)
    except ValueError:
        raise ConfigError(f"bad loss {text!r}", "write it like 0.5%") from None
    if not 0.0 <= percent < 100.0:
        raise ConfigError(f"loss {text!r} outside 0-100 %", "give a percentage below 100")
    return percent / 100.0


def whole_number(what: str, value: object) -> int | None:
    """``value`` as an int (None stays None); a float must have no fraction."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what} {value!r} is not a number", f"give {what} as an integer")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ConfigError(f"{what} {value!r} is not a whole number", f"give {what} as an integer")
    return int(value)


def real_number(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{what} {value!r} is not a finite number", f"give {what} as a number")
    return float(value)


def _check_numbers(shape: object) -> None:
    """Coerce a frozen shape's fields in place: floats for times/loss, ints for rate/queue."""
    for name in ("delay_ms", "jitter_ms", "rtt_ms", "loss"):
        if hasattr(shape, name):
            object.__setattr__(shape, name, real_number(name, getattr(shape, name)))
    for name in ("rate_bps", "queue_packets"):
        object.__setattr__(shape, name, whole_number(name, getattr(shape, name)))


@dataclass(frozen=True, kw_only=True)
class LinkShape:
    """What a link does in ONE direction. Keyword-only; unknown keys are refused."""

    delay_ms: float = 0.0  # one-way
    jitter_ms: float = 0.0  # uniform in +-jitter, order kept
    loss: float = 0.0  # fraction of packets dropped, i.i.d.
    rate_bps: int | None = None  # serialization rate; None = unlimited
    queue_packets: int | None = None  # drop-tail limit of the rate queue

    def __post_init__(self) -> None:
        _check_numbers(self)
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ConfigError(f"negative delay/jitter in {self}", "delays must be >= 0")
        if not 0.0 <= self.loss < 1.0:
            raise ConfigError(f"loss {self.loss} outside [0, 1)", "loss is a fraction here")
        if self.rate_bps is not None and self.rate_bps <= 0:
            raise ConfigError(f"rate {self.rate_bps} must be positive", "use None for no limit")
        if self.queue_packets is not None and self.queue_packets <= 0:
            raise ConfigError(f"queue limit {self.queue_packets} must be positive", "")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinkShape:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"unknown link parameter(s) {sorted(unknown)}", f"known: {sorted(known)}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def is_identity(self) -> bool:
        return self == LinkShape()

    def delayline_json(self) -> dict[str, Any]:
        """The per-direction spec the userspace delay line takes (--a2b / --b2a)."""
        return {
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "loss": self.loss,
            "rate_bps": self.rate_bps,
            "queue_packets": self.queue_packets,
            "queue_bytes": None,
        }


@dataclass(frozen=True, kw_only=True)
class LinkSpec:
    """Both directions of a link; ``a2b`` is from the link's first node to its second."""

    a2b: LinkShape = LinkShape()
    b2a: LinkShape = LinkShape()

    @classmethod
    def symmetric(cls, shape: LinkShape) -> LinkSpec:
        return cls(a2b=shape, b2a=shape)

    @property
    def is_identity(self) -> bool:
        return self.a2b.is_identity and self.b2a.is_identity

    @property
    def lossy(self) -> bool:
        return self.a2b.loss > 0 or self.b2a.loss > 0


@dataclass(frozen=True, kw_only=True)
class PathShape:
    """End-to-end shaping as a user states it (checked like a ``LinkShape``)."""

    rtt_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_bps: int | None = None
    queue_packets: int | None = None

    def __post_init__(self) -> None:
        _check_numbers(self)
        if self.rtt_ms < 0 or self.jitter_ms < 0:
            raise ConfigError(f"negative rtt/jitter in {self}", "delays must be >= 0")
        if not 0.0 <= self.loss < 1.0:
            raise ConfigError(f"loss {self.loss} outside [0, 1)", "loss is a fraction here")
        if self.rate_bps is not None and self.rate_bps <= 0:
            raise ConfigError(f"rate {self.rate_bps} must be positive", "use None for no limit")
        if self.queue_packets is not None and self.queue_packets <= 0:
            raise ConfigError(f"queue limit {self.queue_packets} must be positive", "")
