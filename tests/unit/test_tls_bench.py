"""The TLS benchmark functions run, return sane dicts and print nothing (tiny sizes)."""

from __future__ import annotations

from typing import Any

import pytest

from testbed.teps import benchflights
from testbed.teps.benchflights import flight_medians
from testbed.teps.tls import bench


@pytest.mark.parametrize(
    ("kwargs", "resumed", "accepted"),
    [
        ({}, 0.0, 0.0),
        ({"resumed": True}, 1.0, 0.0),
        ({"resumed": True, "early_data": b"GET /"}, 1.0, 1.0),
        ({"key_type": "ed25519"}, 0.0, 0.0),
    ],
)
def test_handshake_benchmark(
    kwargs: dict[str, Any], resumed: float, accepted: float, capsys: pytest.CaptureFixture[str]
) -> None:
    result = bench.handshakes(3, **kwargs)
    assert result["handshakes"] == 3 and result["handshakes_per_s"] > 0
    assert result["client_cpu_s_per_handshake"] > 0 and result["server_cpu_s_per_handshake"] > 0
    assert result["resumed_fraction"] == resumed
    assert result["early_data_accepted_fraction"] == accepted
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("resumed", [False, True])
def test_cold_handshakes_sleep_before_each_flight_untimed(
    resumed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clock only the benchmark reads: each call moves it 1 us, each sleep by what it slept.
    clock = [0.0]
    slept: list[float] = []

    def now() -> float:
        clock[0] += 1e-6
        return clock[0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(benchflights.time, "perf_counter", now)
    monkeypatch.setattr(benchflights.time, "sleep", sleep)
    result = bench.handshakes(2, resumed=resumed, idle_s=0.25)
    # Client: its core and ClientHello, the server's flight, the tickets. Server: its core with
    # the ClientHello (one idle period on a path), the client's Finished.
    assert len(result["client_cpu_s_per_flight"]) == 3
    assert len(result["server_cpu_s_per_flight"]) == 3
    assert slept == [0.25] * 5 * 2 and result["idle_s"] == 0.25
    # The 2.5 s slept are left out of the wall time, exactly: what remains per handshake is
    # the window's closing reading plus, of each of the 5 sleeps' two readings, the one its
    # measured sleep does not span: 6 ticks of 1 us.
    assert sum(result["client_cpu_s_per_flight"]) > 0
    assert result["wall_s"] == pytest.approx(2 * 6e-6, abs=1e-12)
    assert bench.handshakes(1)["idle_s"] == 0.0 and len(slept) == 10  # no sleep by default
    with pytest.raises(ValueError, match="idle_s"):
        bench.handshakes(1, idle_s=-1.0)


def test_flight_medians_keep_the_common_shape() -> None:
    assert flight_medians([[1.0, 2.0], [3.0, 4.0], [9.0], [5.0, 0.0]]) == [3.0, 2.0]
    assert flight_medians([]) == []


def test_bulk_benchmark() -> None:
    suite = "TLS_CHACHA20_POLY1305_SHA256"
    result = bench.bulk_throughput(2**16, write_size=4096, ciphersuite=suite)
    assert result["bytes"] == 2**16 and result["mb_per_s"] > 0
    # 16 records of 4096 bytes: 5-byte header + 1 content-type byte + 16-byte tag each.
    assert result["wire_overhead_fraction"] == pytest.approx(16 * 22 / 2**16)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        bench.handshakes(0)
    with pytest.raises(ValueError):
        bench.handshakes(1, early_data=b"x")
    with pytest.raises(ValueError):
        bench.bulk_throughput(10, write_size=100)
