"""Pure core of the userspace delay line: link shape, virtio-net header math, scheduling, stats.

Nothing here touches a socket or reads a clock: time (``now``) and randomness (``random.Random``)
are passed in, so every behaviour is unit-testable with exact numbers.

Theory of operation
-------------------
Each direction of a shaped link is an independent FIFO. A frame received at ``now`` goes through:

1. **Loss.** An i.i.d. Bernoulli(loss) draw from the direction's own loss RNG. Loss is applied at
   the link's entry (as netem does), so a lost frame never occupies the queue or the serializer.
2. **Serialization** (only with ``rate_bps``). The link sends one frame at a time: a frame starts
   at ``max(now, busy_until)`` and occupies the serializer for ``wire_bytes * 8 / rate_bps``
   seconds. Frames admitted but not yet fully serialized form the *backlog*; the drop-tail limits
   ``queue_packets`` / ``queue_bytes`` bound it, counting the frame in service. Like a router's
   buffer they count what is on the wire: a GSO super-frame is its N segments and their bytes,
   and it is admitted whole or dropped whole. A frame that arrives at an empty backlog is always
   admitted, even if it alone exceeds a limit: otherwise a super-frame bigger than the buffer
   would black-hole a TCP flow.
3. **Propagation.** ``due = tx_end + max(0, delay + U(-jitter, +jitter))``, then
   ``due = max(due, previous due)``: jitter never reorders a direction (a real wire does not
   reorder, and TCP would read reordering as loss).

``wire_bytes`` is the number of bytes the frame costs on the wire. A GSO super-frame (one AF_PACKET
read carrying many TCP segments, announced by its ``virtio_net_hdr``) costs what its segments
would: every segment repeats the L2-L4 headers.

:class:`SpinBudget` (how long the IO loop busy-polls before a due time) and :class:`Reservoir`
(bounded-memory delay statistics) are here too because they are pure arithmetic on time.
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections import deque
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from testbed.errors import ConfigError  # the CLI turns it into one stderr line and exit code 2

# --- virtio_net_hdr (include/uapi/linux/virtio_net.h), prefixed by PACKET_VNET_HDR -------------

VNET_HDR_LEN = 10
_VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset

VIRTIO_NET_HDR_F_NEEDS_CSUM = 0x01
VIRTIO_NET_HDR_GSO_NONE = 0x00
VIRTIO_NET_HDR_GSO_TCPV4 = 0x01
VIRTIO_NET_HDR_GSO_UDP = 0x03
VIRTIO_NET_HDR_GSO_TCPV6 = 0x04
VIRTIO_NET_HDR_GSO_UDP_L4 = 0x05
VIRTIO_NET_HDR_GSO_ECN = 0x80

_UDP_HDR_LEN = 8
_TCP_DOFF_OFFSET = 12  # byte holding the TCP data offset (RFC 9293 section 3.1), high nibble


@dataclass(frozen=True, slots=True)
class VnetHeader:
    """The 10-byte ``struct virtio_net_hdr`` that AF_PACKET puts before each frame."""

    flags: int = 0
    gso_type: int = VIRTIO_NET_HDR_GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    @classmethod
    def pull(cls, buf: bytes) -> VnetHeader:
        """Parse the header at the start of ``buf`` (little-endian: virtio 1.0 / x86 hosts)."""
        if len(buf) < VNET_HDR_LEN:
            raise ValueError(f"need {VNET_HDR_LEN} bytes for a virtio_net_hdr, got {len(buf)}")
        return cls(*_VNET_HDR.unpack_from(buf, 0))

    def push(self) -> bytes:
        return _VNET_HDR.pack(
            self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start,
            self.csum_offset,
        )

    @property
    def is_gso(self) -> bool:
        gso = self.gso_type & ~VIRTIO_NET_HDR_GSO_ECN
        return gso != VIRTIO_NET_HDR_GSO_NONE and self.gso_size > 0


def segment_header_bytes(frame: bytes, hdr: VnetHeader) -> int:
    """L2-L4 header bytes that every segment of a GSO frame repeats.

    ``frame`` includes the vnet header. On receive the kernel fills ``hdr_len`` with
    ``skb_headlen()``, which is only a hint (it may include payload), so when the frame carries a
    partial checksum the header end is computed from ``csum_start`` (the L4 offset) and the TCP data
    offset instead.
    """
    l2_len = len(frame) - VNET_HDR_LEN
    gso = hdr.gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    l4 = hdr.csum_start
    if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and 0 < l4 < l2_len:
        if gso in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6):
            doff_at = VNET_HDR_LEN + l4 + _TCP_DOFF_OFFSET
            if doff_at < len(frame):
                return min(l4 + (frame[doff_at] >> 4) * 4, l2_len)
        elif gso == VIRTIO_NET_HDR_GSO_UDP_L4:
            return min(l4 + _UDP_HDR_LEN, l2_len)
    return min(hdr.hdr_len, l2_len)


def wire_bytes(frame: bytes) -> tuple[int, int]:
    """Bytes the frame costs on the wire and the number of packets (segments) it stands for.

    ``frame`` is what a PACKET_VNET_HDR socket returns: vnet header + Ethernet frame. The bytes are
    the Ethernet frame length (no preamble/FCS, like netem's rate) plus, for a super-frame of N
    segments, (N - 1) extra copies of the headers.
    """
    l2_len = len(frame) - VNET_HDR_LEN
    # Fast path: byte 1 is gso_type; most frames are not GSO and need no full parse.
    if l2_len <= 0 or frame[1] == VIRTIO_NET_HDR_GSO_NONE:
        return max(l2_len, 0), 1
    hdr = VnetHeader.pull(frame)
    if not hdr.is_gso:
        return l2_len, 1
    head = segment_header_bytes(frame, hdr)
    nsegs = max(1, math.ceil((l2_len - head) / hdr.gso_size))
    return l2_len + (nsegs - 1) * head, nsegs


# --- link shape ------------------------------------------------------------------------------


def _number(key: str, value: Any) -> float:
    # bool is an int subclass and json.loads accepts NaN/Infinity: reject both explicitly.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _positive_int(key: str, value: Any) -> int | None:
    if value is None:
        return None
    number = _number(key, value)
    if number != int(number) or number <= 0:
        raise ConfigError(f"{key} must be a positive integer or null, got {value!r}")
    return int(number)


@dataclass(frozen=True, kw_only=True, slots=True)
class Shape:
    """One direction of a shaped link; the JSON keys of ``--a2b`` / ``--b2a``."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_bps: int | None = None
    queue_packets: int | None = None
    queue_bytes: int | None = None

    def __post_init__(self) -> None:
        for key in ("delay_ms", "jitter_ms"):
            if _number(key, getattr(self, key)) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)!r}")
        if not 0.0 <= _number("loss", self.loss) <= 1.0:
            raise ConfigError(f"loss must be a fraction in [0, 1], got {self.loss!r}")
        for key in ("rate_bps", "queue_packets", "queue_bytes"):
            _positive_int(key, getattr(self, key))

    @classmethod
    def from_mapping(cls, raw: Any) -> Shape:
        if not isinstance(raw, dict):
            raise ConfigError(f"shape must be a JSON object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown shape key(s): {', '.join(map(str, unknown))}")
        # JSON has one number type: normalise 10 -> 10.0 and integral floats such as 1e7 -> int.
        values: dict[str, Any] = {
            k: _number(k, raw[k]) for k in ("delay_ms", "jitter_ms", "loss") if k in raw
        }
        values.update(
            (k, _positive_int(k, raw[k]))
            for k in ("rate_bps", "queue_packets", "queue_bytes") if k in raw
        )
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> Shape:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"bad shape JSON {text!r}: {exc}") from exc
        return cls.from_mapping(raw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def warnings(self) -> list[str]:
        """Settings that are legal but have no effect (surfaced in the stats, never silent)."""
        if self.rate_bps is None and (self.queue_packets or self.queue_bytes):
            return ["queue limit ignored: no rate_bps, so nothing ever waits for serialization"]
        return []


# --- scheduling ------------------------------------------------------------------------------


class DropReason(Enum):
    LOSS = "loss"
    QUEUE = "queue"


class DirectionScheduler:
    """Decides when (or whether) each frame of one link direction leaves; see module docstring."""

    def __init__(self, shape: Shape, loss_rng: random.Random, jitter_rng: random.Random) -> None:
        self.shape = shape
        self._loss_rng = loss_rng
        self._jitter_rng = jitter_rng
        self._delay_s = shape.delay_ms / 1e3
        self._jitter_s = shape.jitter_ms / 1e3
        self._s_per_bit = 1.0 / shape.rate_bps if shape.rate_bps else 0.0
        self._pure_delay = not (shape.loss or shape.jitter_ms or shape.rate_bps)
        self._busy_until = -math.inf
        self._last_due = -math.inf
        # (tx_end, wire_bytes, segments) of frames admitted but not yet fully serialized.
        self._backlog: deque[tuple[float, int, int]] = deque()
        self._backlog_bytes = 0
        self._backlog_packets = 0
        self.last_drop: DropReason | None = None
        self.admitted = 0
        self.dropped_loss = 0
        self.dropped_queue = 0

    @classmethod
    def seeded(cls, shape: Shape, seed: int, direction: int) -> DirectionScheduler:
        """Reproducible RNGs: loss from ``Random(seed + direction)`` as the builder expects.

        Jitter has its own stream so that turning jitter on does not change which frames are lost.
        """
        jitter_rng = random.Random(f"jitter:{seed}:{direction}")  # str seeds hash stably (SHA-512)
        return cls(shape, random.Random(seed + direction), jitter_rng)

    @property
    def backlog_packets(self) -> int:
        return self._backlog_packets

    @property
    def backlog_bytes(self) -> int:
        return self._backlog_bytes

    def admit(self, now: float, frame_len: int, wire_bytes: int, segments: int = 1) -> float | None:
        """Due time of a frame received at ``now``, or None if dropped (reason in ``last_drop``).

        ``frame_len`` is the frame as read; queueing and serialization use ``wire_bytes`` and
        ``segments`` (see :func:`wire_bytes`) so a GSO super-frame costs what its segments would.
        """
        del frame_len  # kept in the signature for callers' clarity; the link counts wire bytes
        self.last_drop = None
        if self._pure_delay:  # fast path for the common pure-delay link (called per frame)
            due = now + self._delay_s
            if due < self._last_due:
                due = self._last_due
            self._last_due = due
            self.admitted += 1
            return due
        if self.shape.loss > 0.0 and self._loss_rng.random() < self.shape.loss:
            self.last_drop = DropReason.LOSS
            self.dropped_loss += 1
            return None
        tx_end = now
        if self._s_per_bit:
            self._expire(now)
            if not self._fits(wire_bytes, segments):
                self.last_drop = DropReason.QUEUE
                self.dropped_queue += 1
                return None
            tx_end = max(now, self._busy_until) + wire_bytes * 8 * self._s_per_bit
            self._busy_until = tx_end
            self._backlog.append((tx_end, wire_bytes, segments))
            self._backlog_bytes += wire_bytes
            self._backlog_packets += segments
        delay = self._delay_s
        if self._jitter_s:
            delay = max(0.0, delay + self._jitter_rng.uniform(-self._jitter_s, self._jitter_s))
        due = max(tx_end + delay, self._last_due)
        self._last_due = due
        self.admitted += 1
        return due

    def _expire(self, now: float) -> None:
        backlog = self._backlog
        while backlog and backlog[0][0] <= now:
            _end, nbytes, segments = backlog.popleft()
            self._backlog_bytes -= nbytes
            self._backlog_packets -= segments

    def _fits(self, wire_bytes: int, segments: int) -> bool:
        if not self._backlog:
            return True
        limit_p, limit_b = self.shape.queue_packets, self.shape.queue_bytes
        if limit_p is not None and self._backlog_packets + segments > limit_p:
            return False
        return limit_b is None or self._backlog_bytes + wire_bytes <= limit_b


# --- busy-wait budget ------------------------------------------------------------------------


class SpinBudget:
    """How long before a due time the IO loop stops sleeping and busy-polls.

    Waking from select() is 15-70 us late on a VM even with a 1 ns timer slack, so the loop
    sleeps until ``lead`` before the deadline and polls from there (lateness ~1 us instead).
    Polling burns a core, though, and with several delay lines and the endpoints sharing two
    vCPUs it would steal the CPU they need; so the polling time is capped to ``fraction`` of each
    ``window`` of wall time. Past the cap the lead is 0: frames go out with select()'s own
    precision until the next window.
    """

    def __init__(self, lead: float, fraction: float, window: float = 0.1,
                 now: float = 0.0) -> None:
        if lead < 0 or not 0.0 <= fraction <= 1.0 or window <= 0:
            raise ValueError("need lead >= 0, 0 <= fraction <= 1 and window > 0")
        self._lead = lead
        self._allowance = fraction * window
        self._window = window
        self._window_end = now + window
        self._left = self._allowance
        self.spent = 0.0  # total polling time, for the stats

    def lead(self, now: float) -> float:
        """Current lead: ``lead`` while this window's allowance lasts, else 0."""
        if now >= self._window_end:
            self._window_end = now + self._window
            self._left = self._allowance
        return self._lead if self._left > 0.0 else 0.0

    def charge(self, seconds: float) -> None:
        """Account ``seconds`` spent polling."""
        self._left -= seconds
        self.spent += seconds


# --- bounded statistics ----------------------------------------------------------------------


class Reservoir:
    """Exact count/mean/min/max plus a uniform sample of the values for quantiles.

    Memory is bounded by ``capacity`` whatever the number of values, so a line forwarding millions
    of frames stays flat; quantiles of a 32k sample are well within the precision reported. The
    sample is kept with Li's Algorithm L ("Reservoir-sampling algorithms of time complexity
    O(n(1 + log(N/n)))", ACM TOMS 1994): it computes how many values to skip before the next
    replacement, so once the reservoir is full a typical ``add`` draws no random number at all
    (``add`` runs twice per forwarded frame).
    """

    __slots__ = ("capacity", "count", "total", "minimum", "maximum", "_sample", "_rng", "_w",
                 "_next")

    def __init__(self, capacity: int = 32768, rng: random.Random | None = None) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.count = 0
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf
        self._sample: list[float] = []
        self._rng = rng if rng is not None else random.Random(0)
        self._w = 1.0
        self._next = capacity  # count at which the next value replaces a sampled one

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if value < self.minimum:
            self.minimum = value
        if value > self.maximum:
            self.maximum = value
        if self.count <= self.capacity:
            self._sample.append(value)
            if self.count == self.capacity:
                self._skip()
        elif self.count == self._next:
            self._sample[int(self._rng.random() * self.capacity)] = value
            self._skip()

    def _skip(self) -> None:
        rand = self._rng.random
        # 1 - random() is in (0, 1], so the logarithms are finite.
        self._w *= math.exp(math.log(1.0 - rand()) / self.capacity)
        if self._w >= 1.0:  # only possible with rand() == 0.0 on the first call
            self._next += 1
            return
        self._next += int(math.log(1.0 - rand()) / math.log1p(-self._w)) + 1

    @property
    def sample_size(self) -> int:
        return len(self._sample)

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile of the sample (None when empty)."""
        if not self._sample:
            return None
        ordered = sorted(self._sample)
        rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        return ordered[rank]

    def summary(self, scale: float = 1.0, digits: int = 4) -> dict[str, float | int | None]:
        """count/median/p99/mean/min/max, values multiplied by ``scale`` (e.g. s -> ms)."""

        def fmt(value: float | None) -> float | None:
            return None if value is None else round(value * scale, digits)

        empty = self.count == 0
        return {
            "count": self.count,
            "median": fmt(self.quantile(0.5)),
            "p99": fmt(self.quantile(0.99)),
            "mean": None if empty else fmt(self.total / self.count),
            "min": None if empty else fmt(self.minimum),
            "max": None if empty else fmt(self.maximum),
        }
