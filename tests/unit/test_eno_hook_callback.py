"""The NFQUEUE callback of the hook process, with a fake packet (no queue needed)."""

from __future__ import annotations

from testbed.eno.control import Settings
from testbed.eno.engine import HookEngine
from testbed.eno.hook import NF_INET_LOCAL_OUT, PacketTimer, _syn_with_data, make_callback
from testbed.packet import parse_segment
from tests.eno_segments import segment

A, B = ("10.0.1.1", 40000), ("10.0.2.1", 5000)


class FakePacket:
    def __init__(self, raw: bytes, hook: int) -> None:
        self.raw, self.hook, self.calls = raw, hook, []
        self.mark = 0x5  # bits the rules set before queueing stay set

    def get_payload(self) -> bytes:
        self.calls.append("get")
        return self.raw

    def set_payload(self, raw: bytes) -> None:
        self.calls.append("set")
        self.raw = raw

    def get_mark(self) -> int:
        return self.mark

    def set_mark(self, mark: int) -> None:
        self.calls.append(f"mark {mark:#x}")
        self.mark = mark

    def repeat(self) -> None:
        self.calls.append("repeat")


# Every verdict: the packet mark the queue gave plus RELEASED, then NF_REPEAT (marks.py).
RELEASE = ["mark 0x1000005", "repeat"]


def test_syn_with_data_detection():
    assert _syn_with_data(segment(A, B, "S", 1, payload=b"x"))
    assert not _syn_with_data(segment(A, B, "S", 1))
    assert not _syn_with_data(segment(A, B, "PA", 1, 1, payload=b"x"))
    assert not _syn_with_data(b"\x45" + bytes(10))


def test_outgoing_syn_is_rewritten_before_its_verdict():
    engine = HookEngine()
    engine.announce(A[1], Settings(teps=((0x20, None),)), 0.0, 1e9)
    callback = make_callback(engine, PacketTimer())
    packet = FakePacket(segment(A, B, "S", 1), NF_INET_LOCAL_OUT)
    callback(packet)
    assert packet.calls == ["get", "set", *RELEASE]
    assert parse_segment(packet.raw).options.endswith(bytes.fromhex("45032000"))


def test_incoming_segments_get_their_verdict_before_the_core_reads_them():
    engine = HookEngine()
    engine.listen(B[1], Settings(teps=((0x20, None),)), owner=1)
    callback = make_callback(engine, PacketTimer())
    packet = FakePacket(segment(A, B, "S", 1, options=bytes.fromhex(
        "020405b4" "45032000")), hook=0)
    callback(packet)
    assert packet.calls == ["get", *RELEASE]
    assert engine.result((*B, *A)).state == "syn_received"


def test_a_failing_engine_still_releases_and_counts():
    engine = HookEngine()

    def broken(raw: bytes, outgoing: bool, now: float, control_read: bool = False) -> None:
        raise RuntimeError("bug")

    engine.process = broken  # type: ignore[method-assign,assignment]
    timer = PacketTimer()
    packet = FakePacket(segment(A, B, "S", 1), NF_INET_LOCAL_OUT)
    make_callback(engine, timer)(packet)
    assert packet.calls == ["get", *RELEASE]
    assert engine.counts["internal_errors"] == 1
    assert timer.count == 1 and timer.stats()["callbacks"] == 1


class RecordingZeroer:
    def __init__(self, log: list) -> None:
        self.log = log

    def zero(self, tup) -> bool:
        self.log.append(("zero", tup))
        return False


def test_reopened_conntrack_counters_are_zeroed_before_the_syn_is_released():
    """Passive end: only a SYN-only to a listener, for a 4-tuple not followed yet, and before
    its release (after it, a new connection's entry would be confirmed and zeroed too)."""
    engine = HookEngine()
    engine.listen(B[1], Settings(teps=((0x20, None),)), owner=1)
    log: list = []
    zeroer = RecordingZeroer(log)
    callback = make_callback(engine, PacketTimer(), zeroer)  # type: ignore[arg-type]

    class Logged(FakePacket):
        def repeat(self) -> None:
            log.append("repeat")

    syn = segment(A, B, "S", 1000, options=bytes.fromhex("020405b4" "45032000"))
    callback(Logged(syn, 1))  # NF_INET_PRE_ROUTING
    assert log == [("zero", (*A, *B)), "repeat"]
    log.clear()
    callback(Logged(syn, 1))  # a retransmission of a followed connection
    callback(Logged(segment(A, ("10.0.2.1", 5001), "S", 7), 1))  # no listener there
    callback(Logged(segment(A, B, "A", 1001, 5001), 1))  # not a SYN
    assert log == ["repeat"] * 3
