"""The crafted capture the pcap reader and flow tests share.

The test capture is crafted with scapy (``build_handshake_packets``) so every field is known;
tests/data/handshake_small.pcap is the committed copy of it (regenerate with
``python tests/unit/pcap_capture.py``), checked against a fresh build in test_pcap.py. The
fixtures that hand it to a test are in tests/unit/conftest.py.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Padding, Raw
from scapy.utils import EDecimal, PcapWriter

from testbed.net.flows import ConnKey

DATA = Path(__file__).resolve().parent.parent / "data"
COMMITTED = DATA / "handshake_small.pcap"
T0 = EDecimal("1700000000")
T0_NS = 1_700_000_000 * 10**9
C, S = "10.0.0.1", "10.0.0.2"
CMAC, SMAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
SYN_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
SYNACK_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (2, 1)), ("NOP", None),
               ("WScale", 7)]
REQUEST = b"GET / HTTP/1.0\r\n\r\n"
RESPONSE = b"HTTP/1.0 200 OK\r\n\r\nhello"
ENO_DATA = b"hello-eno"
CONN_A = ConnKey(C, 40001, S, 80)
CONN_B = ConnKey(C, 40002, S, 80)
CONN_C = ConnKey(C, 40003, S, 443)
CONN_D = ConnKey(C, 40004, S, 81)
CONN_V6 = ConnKey("fd00::1", 40005, "fd00::2", 80)


def _tcp(us: int, c2s: bool, port: int, flags: str, seq: int, ack: int = 0,
         options: list | None = None, payload: bytes = b"", sport: int = 80) -> Packet:
    """One Ethernet/IPv4/TCP packet ``us`` microseconds after T0."""
    src, dst = (C, S) if c2s else (S, C)
    sp, dp = (port, sport) if c2s else (sport, port)
    pkt = (Ether(src=CMAC if c2s else SMAC, dst=SMAC if c2s else CMAC)
           / IP(src=src, dst=dst, id=1, ttl=64)
           / TCP(sport=sp, dport=dp, flags=flags, seq=seq, ack=ack, window=64240 if c2s else 65160,
                 options=options or []))
    if payload:
        pkt = pkt / Raw(payload)
    pkt.time = T0 + EDecimal(us) / EDecimal(10**6)
    return pkt


def build_handshake_packets() -> list[Packet]:
    """The test capture: four IPv4 connections, one IPv6 SYN, an ARP and a UDP packet."""
    a = [  # plain connection with data both ways and FIN
        _tcp(0, True, 40001, "S", 1000, options=SYN_OPTS),
        _tcp(100, False, 40001, "SA", 5000, 1001, options=SYNACK_OPTS),
        _tcp(150, True, 40001, "A", 1001, 5001) / Padding(b"\x00" * 6),  # Ethernet min size
        _tcp(200, True, 40001, "PA", 1001, 5001, payload=REQUEST),
        _tcp(300, False, 40001, "A", 5001, 1019),
        _tcp(400, False, 40001, "PA", 5001, 1019, payload=RESPONSE),
        _tcp(500, True, 40001, "A", 1019, 5025),
        _tcp(600, True, 40001, "FA", 1019, 5025),
        _tcp(700, False, 40001, "FA", 5025, 1020),
        _tcp(800, True, 40001, "A", 1020, 5026),
    ]
    b = [  # SYN retransmitted after a 1 s RTO (RFC 6298 section 2.1)
        _tcp(10_000, True, 40002, "S", 2000),
        _tcp(1_010_000, True, 40002, "S", 2000),
        _tcp(1_010_100, False, 40002, "SA", 6000, 2001),
        _tcp(1_010_150, True, 40002, "A", 2001, 6001),
    ]
    c = [  # TCP-ENO option (kind 69) on SYN and SYN-ACK, data on the first ACK, retransmitted
        _tcp(20_000, True, 40003, "S", 3000, options=[("MSS", 1460), (69, b"\x20")], sport=443),
        _tcp(20_100, False, 40003, "SA", 7000, 3001, options=[("MSS", 1460), (69, b"\x21")],
             sport=443),
        _tcp(20_150, True, 40003, "PA", 3001, 7001, payload=ENO_DATA, sport=443),
        _tcp(220_150, True, 40003, "PA", 3001, 7001, payload=ENO_DATA, sport=443),
        _tcp(220_250, False, 40003, "A", 7001, 3010, sport=443),
    ]
    d = [  # closed port: RST
        _tcp(30_000, True, 40004, "S", 4000, sport=81),
        _tcp(30_050, False, 40004, "RA", 0, 4001, sport=81),
    ]
    v6 = Ether(src=CMAC, dst=SMAC) / IPv6(src="fd00::1", dst="fd00::2") / TCP(
        sport=40005, dport=80, flags="S", seq=9000, window=64800)
    v6.time = T0 + EDecimal("0.04")
    arp = Ether(src=CMAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=C, pdst=S, hwsrc=CMAC)
    arp.time = T0 + EDecimal("0.000120")
    udp = Ether(src=CMAC, dst=SMAC) / IP(src=C, dst=S, id=2) / UDP(sport=5353, dport=53) / Raw(
        b"dns?")
    udp.time = T0 + EDecimal("0.000130")
    return sorted([*a, *b, *c, *d, v6, arp, udp], key=lambda p: p.time)


def write_pcap(path: Path, packets: list[Packet], *, nano: bool = False, endian: str = "<",
               linktype: int | None = None) -> Path:
    """Write packets with scapy's own writer, independent of the reader under test."""
    with PcapWriter(str(path), nano=nano, endianness=endian, linktype=linktype,
                    sync=True) as writer:
        for pkt in packets:
            writer.write(pkt)
    return path


def pcap_bytes(records: list[tuple[int, int, bytes, int]], *, linktype: int = 1) -> bytes:
    """A hand-made pcap: records are (sec, usec, captured bytes, original length)."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for sec, usec, data, orig in records:
        out += struct.pack("<IIII", sec, usec, len(data), orig) + data
    return out


if __name__ == "__main__":
    # Regenerate the committed test capture: python tests/unit/pcap_capture.py
    write_pcap(COMMITTED, build_handshake_packets())
    print(f"wrote {COMMITTED} ({COMMITTED.stat().st_size} bytes)", file=sys.stderr)
