"""drop-syn-data, strip-syn-data and replay-syn on crafted packets (RFC 8547 §4.7 paths)."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP

from middleboxes.nfq import Runner
from middleboxes.pktmodel import ACCEPT, DROP, create_model
from middleboxes.synboxes import DropSynData, ReplaySyn, StripSynData
from tests.unit.test_middlebox_models import out, seg, valid

ENO = [("MSS", 1460), (69, b"\x01\x21"), ("NOP", None), ("NOP", None)]  # SYN-form ENO
INIT1 = b"\x15\x10\x15\x10" + bytes(range(40))  # stands for a TEP's SYN data


def syn_data(seq: int = 1000, ip_id: int = 1) -> bytes:
    return seg("S", seq=seq, payload=INIT1, options=ENO, ip_id=ip_id)


def test_drop_syn_data_drops_only_syns_that_carry_payload() -> None:
    box = DropSynData()
    assert box.process(syn_data(), 0) == DROP
    assert box.process(seg("SA", seq=9, ack=1001, payload=b"init2", c2s=False), 0) == DROP
    for passing in (seg("S", seq=1000, options=ENO), seg("SA", seq=9, ack=1001, c2s=False),
                    seg("PA", seq=1001, ack=10, payload=INIT1), b"not a packet"):
        assert box.process(passing, 0) == ACCEPT
    assert (box.counters.seen, box.counters.dropped, box.counters.changed) == (6, 2, 0)


def test_strip_syn_data_keeps_header_and_options_and_fixes_lengths() -> None:
    box = StripSynData()
    raw = syn_data()
    stripped = valid(out(box.process(raw, 0), raw))  # checksums recomputed
    original = IP(raw)
    assert bytes(stripped[TCP].payload) == b""
    assert stripped.len == original.len - len(INIT1)
    tcp_head = bytes(original[TCP])[: original[TCP].dataofs * 4]
    assert bytes(stripped[TCP]) == tcp_head[:16] + bytes(stripped[TCP])[16:18] + tcp_head[18:]
    synack = seg("SA", seq=9, ack=1001, payload=b"init2", c2s=False)
    assert bytes(valid(out(box.process(synack, 0), synack))[TCP].payload) == b""
    data = seg("PA", seq=1001, ack=10, payload=INIT1)
    assert box.process(data, 0) == ACCEPT
    assert box.counters.changed == 2


def test_replay_syn_forwards_then_injects_exact_copies_later() -> None:
    box = ReplaySyn(delay_ms=500, copies=2)
    raw = syn_data()
    assert box.process(raw, 10.0) == ACCEPT  # the original goes through unchanged
    assert box.next_deadline() == 10.5
    assert box.poll(10.4) == []
    assert box.poll(10.5) == [raw]
    assert box.next_deadline() == 11.0
    assert box.poll(12.0) == [raw]
    assert box.next_deadline() is None and box.replayed == 2
    assert box.counters.as_dict() == {"seen": 1, "changed": 0, "dropped": 0, "reset": 0,
                                      "injected": 2}


def test_replay_syn_schedules_one_attempt_once_and_ignores_the_rest() -> None:
    box = ReplaySyn(delay_ms=100)
    assert box.process(syn_data(ip_id=1), 0.0) == ACCEPT
    assert box.process(syn_data(ip_id=2), 0.05) == ACCEPT  # retransmission: same ISN
    box.process(seg("S", seq=5, options=ENO), 0.0)  # no data: nothing to replay
    box.process(seg("SA", seq=9, ack=1001, payload=b"x", c2s=False), 0.0)  # not a client SYN
    assert box.poll(1.0) == [syn_data(ip_id=1)]
    box.process(syn_data(seq=7000), 2.0)  # a new attempt on the same endpoints
    assert box.poll(2.1) == [syn_data(seq=7000)]


def test_replay_syn_pending_copies_are_dropped_on_stop() -> None:
    box = ReplaySyn()
    box.process(syn_data(), 0.0)
    assert box.flush() == [] and box.next_deadline() is None


class FakeInjector:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, packet: bytes) -> None:
        self.sent.append(packet)


def test_runner_releases_replayed_syn_when_due() -> None:
    model = create_model("replay-syn", {"delay_ms": 0})
    injector = FakeInjector()
    runner = Runner(model, injector)  # type: ignore[arg-type]
    assert isinstance(model, ReplaySyn)
    model.process(syn_data(), 0.0)
    runner.release_due()
    assert injector.sent == [syn_data()]
    assert runner.timeout() is None
    assert isinstance(create_model("strip-syn-data", {}), StripSynData)
