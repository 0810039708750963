"""Fixtures of the pcap reader and flow tests (test_pcap.py, test_flows.py): the capture
tests/unit/pcap_capture.py crafts, as scapy packets, as a pcap file and as read segments.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.packet import Packet

from testbed.net.pcap import Segment, read_segments
from tests.unit.pcap_capture import build_handshake_packets, write_pcap


@pytest.fixture(scope="module")
def packets() -> list[Packet]:
    return build_handshake_packets()


@pytest.fixture(scope="module")
def pcap_path(tmp_path_factory: pytest.TempPathFactory, packets: list[Packet]) -> Path:
    return write_pcap(tmp_path_factory.mktemp("pcap") / "handshake.pcap", packets)


@pytest.fixture(scope="module")
def segments(pcap_path: Path) -> list[Segment]:
    return read_segments(pcap_path)
