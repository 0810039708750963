"""The bpf datapath's userspace half: map layouts and the pure core's verdict on what the
kernel program recorded (testbed/eno/bpf/datapath.py). The program itself runs in
tests/emulation/test_eno_bpf.py."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from testbed.eno.bpf import attach, datapath, maps
from testbed.eno.bpf.datapath import _verdict, judge
from testbed.eno.control import Settings
from testbed.errors import KernelFeatureError

A, B = ("10.0.1.1", 40000), ("10.0.2.1", 5000)
OFFER = Settings(teps=((0x23, None), (0x21, None)))  # x25519 preferred
SERVER = Settings(teps=((0x21, None), (0x23, None)))  # p256 preferred
A_SYN = bytes.fromhex("4504 2123".replace(" ", ""))  # wire order: least preferred first
B_SYNACK_21 = bytes.fromhex("45040121")  # b = 1, TEP 0x21


def active_record(peer: bytes, status: int = maps.PEER_OK, echoed: bool = True,
                  syns: int = 1, flags: int = 0) -> maps.SockRecord:
    return maps.SockRecord(state=maps.ST_ECHO if echoed else maps.ST_DONE, syns=syns,
                           flags=flags | (maps.F_SYNACK_ENO if echoed else 0),
                           peer_status=status, mine=A_SYN, peer=peer)


def passive_record(peer: bytes, mine: bytes, ack_eno: bool, status: int = maps.PEER_OK,
                   flags: int = 0) -> maps.SockRecord:
    return maps.SockRecord(state=maps.ST_PASSIVE, peer_status=status, mine=mine, peer=peer,
                           flags=flags | (maps.F_ACK_ENO if ack_eno else 0))


def test_record_layout_round_trips_and_matches_the_c_struct_size() -> None:
    record = active_record(B_SYNACK_21, flags=maps.F_ENO_LATER)
    record.segs_in, record.offered = 7, maps.id_bitmap([0x21, 0x23])
    raw = record.pack()
    assert len(raw) == 156 == maps.SK_FMT.size  # sizeof(struct eno_sk): 8 + 4 + 16 + 64 + 64
    assert raw[:12] == bytes([maps.ST_ECHO, 4, 4, maps.F_ENO_LATER | maps.F_SYNACK_ENO,
                              0, 1, 0, 0, 7, 0, 0, 0])
    assert raw[12 + 4] == 0b00001010  # ids 0x21 and 0x23: byte 4, bits 1 and 3
    assert maps.SockRecord.unpack(raw) == record
    assert maps.LISTEN_SIZE == 8 + 8 * 66  # sizeof(struct eno_listen)


def test_listen_value_lists_the_prepared_synack_options_best_first() -> None:
    raw = maps.pack_listen([(0x21, B_SYNACK_21), (0x23, bytes.fromhex("45040123"))], True)
    assert raw[:8] == bytes([2, 1, 0, 0, 0, 0, 0, 0])  # count, need_a, pad, key_lens
    assert raw[8:14] == bytes([0x21, 4]) + B_SYNACK_21
    assert raw[74:80] == bytes([0x23, 4, 0x45, 4, 1, 0x23])
    assert len(raw) == maps.LISTEN_SIZE
    with pytest.raises(ValueError, match="at most 8"):
        maps.pack_listen([(0x20 + i, B_SYNACK_21) for i in range(9)], False)


@pytest.mark.skipif(shutil.which("bpftool") is None or not attach.OBJECT.exists(),
                    reason="needs bpftool and the compiled object (make setup)")
def test_struct_sizes_match_the_compiled_object() -> None:
    dump = subprocess.run(["bpftool", "btf", "dump", "file", str(attach.OBJECT), "-j"],
                          capture_output=True, text=True, check=True)
    sizes = {t["name"]: t["size"] for t in json.loads(dump.stdout)["types"]
             if t["kind"] == "STRUCT"}
    assert sizes["eno_sk"] == maps.SK_FMT.size
    assert sizes["eno_listen"] == maps.LISTEN_SIZE


def test_active_negotiates_what_the_core_selects_from_the_recorded_synack() -> None:
    result = judge(active_record(B_SYNACK_21), OFFER, active=True, local=A, remote=B)
    assert (result.outcome, result.role, result.tep_id, result.error) == (
        "negotiated", "A", 0x21, None)
    assert result.transcript_bytes == A_SYN + B_SYNACK_21  # RFC 8547 §4.8


def test_a_repeated_handshake_reuses_the_verdict_with_each_connections_addresses() -> None:
    first = judge(active_record(B_SYNACK_21), OFFER, active=True, local=A, remote=B)
    hits = _verdict.cache_info().hits
    other = (("10.0.0.9", 40001), ("10.0.0.8", 5000))
    second = judge(active_record(B_SYNACK_21), OFFER, active=True, local=other[0],
                   remote=other[1])
    assert _verdict.cache_info().hits == hits + 1
    assert (first.local, first.remote) == (A, B)
    assert (second.local, second.remote) == other
    assert dataclasses.replace(second, local=A, remote=B) == first


@pytest.mark.parametrize(("peer", "status", "reason"), [
    (b"", maps.PEER_ABSENT, "no_eno_in_synack"),
    (B_SYNACK_21, maps.PEER_MULTIPLE, "multiple_eno"),
    (bytes.fromhex("450481a1"), maps.PEER_MALFORMED, "malformed_option"),  # length byte overrun
    (bytes.fromhex("450321"), maps.PEER_OK, "same_b_bit"),  # implicit global: b = 0 (§4.6)
])
def test_active_falls_back_as_rfc_8547_says(peer: bytes, status: int, reason: str) -> None:
    result = judge(active_record(peer, status, echoed=False), OFFER, active=True, local=A,
                   remote=B)
    assert (result.outcome, result.reason, result.error) == ("fallback", reason, None)


def test_required_policy_aborts_where_opportunistic_falls_back() -> None:
    required = Settings(teps=OFFER.teps, mandatory=True)
    result = judge(active_record(b"", maps.PEER_ABSENT, echoed=False), required, active=True,
                   local=A, remote=B)
    assert (result.outcome, result.fallback) == ("aborted", "no_eno_in_synack")


def test_kernel_and_core_disagreeing_is_an_error_not_a_result() -> None:
    # The kernel echoed ENO although B selected a TEP twice (invalid, §4.5 condition 3).
    twice = bytes.fromhex("4505012121")
    result = judge(active_record(twice), OFFER, active=True, local=A, remote=B)
    assert result.error is not None and "disagree" in result.error


def test_syn_retransmissions_without_eno_are_replayed() -> None:
    # 2 SYNs with ENO allowed (syn_retries 1), 3 sent: the third went without (§4.6).
    settings = Settings(teps=OFFER.teps, syn_retries=1)
    record = active_record(b"", maps.PEER_ABSENT, echoed=False, syns=3,
                           flags=maps.F_SYN_DROPPED)
    result = judge(record, settings, active=True, local=A, remote=B)
    assert (result.outcome, result.reason) == ("fallback", "syn_retransmission")


def test_passive_negotiates_and_checks_the_first_ack() -> None:
    mine = bytes.fromhex("45040121")  # B's most preferred TEP that A offered (§4.5)
    ok = judge(passive_record(A_SYN, mine, ack_eno=True), SERVER, active=False, local=B,
               remote=A)
    assert (ok.outcome, ok.role, ok.tep_id, ok.error) == ("negotiated", "B", 0x21, None)
    assert ok.transcript_bytes == A_SYN + mine
    stripped = judge(passive_record(A_SYN, mine, ack_eno=False, flags=maps.F_ENO_LATER),
                     SERVER, active=False, local=B, remote=A)
    assert (stripped.outcome, stripped.reason) == ("fallback", "no_eno_in_ack")
    assert stripped.peer_eno_after_fallback  # the split check (stream.py) resets it


def test_passive_answer_from_the_kernel_must_be_the_cores() -> None:
    wrong = bytes.fromhex("45040123")  # the core picks 0x21, B's preference
    result = judge(passive_record(A_SYN, wrong, ack_eno=True), SERVER, active=False, local=B,
                   remote=A)
    assert result.error is not None and "SYN-ACK" in result.error


def test_passive_without_eno_in_the_syn_is_plain() -> None:
    result = judge(passive_record(b"", b"", ack_eno=False, status=maps.PEER_ABSENT), SERVER,
                   active=False, local=B, remote=A)
    assert (result.outcome, result.reason) == ("fallback", "no_eno_in_syn")


def test_listener_candidates_are_what_the_core_answers() -> None:
    config = SERVER.eno_config()
    assert datapath._synack_for(config, 0x21) == bytes.fromhex("45040121")
    assert datapath._synack_for(config, 0x23) == bytes.fromhex("45040123")


def test_settings_the_kernel_program_cannot_honour_are_refused() -> None:
    with pytest.raises(datapath.BpfDatapathError, match="nfqueue"):
        datapath._config(Settings(teps=OFFER.teps, passive_role=True), active=True)
    with pytest.raises(datapath.BpfDatapathError, match="nfqueue"):
        datapath._config(Settings(teps=OFFER.teps, syn_data=(0x21,)), active=False)


def test_datapath_choice(monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(attach, "support_problem", lambda: "no cgroup v2 mount")
    assert attach.resolve("nfqueue") == "nfqueue"
    assert attach.resolve("auto") == "nfqueue"
    assert capsys.readouterr().err == (
        "notice: bpf ENO datapath unavailable (no cgroup v2 mount); using nfqueue\n")
    with pytest.raises(KernelFeatureError) as info:
        attach.resolve("bpf")
    assert info.value.one_line() == ("bpf ENO datapath unavailable: no cgroup v2 mount "
                                     "(fix: use --eno-datapath nfqueue)")
    monkeypatch.setattr(attach, "support_problem", lambda: None)
    assert attach.resolve("auto") == "bpf"


def test_arms_the_program_cannot_serve_run_on_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    from testbed.errors import ConfigError
    from testbed.workload import Workload, eno_datapath

    monkeypatch.setattr(attach, "support_problem", lambda: None)
    assert eno_datapath(Workload(proto="tcpcrypt", eno_datapath="auto")) == "bpf"
    assert eno_datapath(Workload(proto="tcpcrypt-resume", eno_datapath="auto")) == "bpf"
    assert eno_datapath(Workload(proto="tcpcrypt-syn", eno_datapath="auto")) == "nfqueue"
    with pytest.raises(ConfigError) as info:
        eno_datapath(Workload(proto="tcpcrypt-syn", eno_datapath="bpf"))
    assert "--eno-datapath nfqueue" in info.value.one_line()


def test_cli_refuses_bpf_where_it_cannot_run(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from testbed import cli

    monkeypatch.setattr(attach, "support_problem", lambda: "kernel without header options")
    assert cli.main(["probe", "--proto", "eno-test", "--eno-datapath", "bpf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--eno-datapath nfqueue" in err[0] and "header options" in err[0]


def test_reordering_is_a_sack_block_above_the_ack_not_a_d_sack() -> None:
    import dataclasses
    import struct

    from experiments.common import reordered, sack_holes
    from testbed.net.flows import connections
    from testbed.net.pcap import read_segments

    pcap = Path(__file__).resolve().parent.parent / "data" / "probe_plain_20ms.pcap"
    conn = next(iter(connections(read_segments(pcap)).values()))
    assert reordered(conn) == 0
    seg = next(cs.segment for cs in conn.segments if not cs.segment.is_syn)
    ack = seg.ack

    def with_sack(left: int, right: int) -> object:
        block = struct.pack("!II", left % 2**32, right % 2**32)
        return dataclasses.replace(seg, options=((5, block),))

    assert sack_holes(with_sack(ack + 100, ack + 200)) == 1  # a hole: reordering or loss
    assert sack_holes(with_sack(ack - 100, ack)) == 0  # D-SACK: a duplicate arrived


def test_clean_sweeps_only_probe_pins_of_dead_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attach, "BPF_FS", tmp_path)
    dead = tmp_path / f"{attach.PROBE_PREFIX}999999999-x"
    alive = tmp_path / f"{attach.PROBE_PREFIX}{os.getpid()}-y"
    other = tmp_path / "tcpinc-eno-123-client"  # a network's pins: clean_state's business
    for pins in (dead, alive, other):
        pins.mkdir()
        (pins / "prog").write_text("")
    assert attach.sweep_probes() == 1
    assert not dead.exists() and alive.exists() and other.exists()
