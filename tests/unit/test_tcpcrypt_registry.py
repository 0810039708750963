"""tcpcrypt's TEP registry entries and the in-memory benchmark functions (no timed asserts)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testbed.teps import base
from testbed.teps.base import Role, TepContext
from testbed.teps.tcpcrypt import TcpcryptCore, register_all, spec, specs
from testbed.teps.tcpcrypt.bench import bench_all, bench_framing, bench_handshakes
from testbed.teps.tcpcrypt.constants import AeadId, TepId


@pytest.fixture
def empty_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_REGISTRY", {})


def test_specs() -> None:
    entries = specs()
    assert [(s.tep_id, s.name) for s in entries] == [
        (0x21, "tcpcrypt-p256"),
        (0x22, "tcpcrypt-p521"),
        (0x23, "tcpcrypt-x25519"),
        (0x24, "tcpcrypt-x448"),
    ]
    assert all(s.standard and not s.explicit_only for s in entries)
    made = spec(TepId.X448).factory(TepContext(Role.A, b""))
    assert isinstance(made, TcpcryptCore) and made.tep_id == 0x24
    with pytest.raises(ValueError):
        spec(0x30)


def test_register_all(empty_registry: None) -> None:
    assert base.registered() == []
    register_all()
    assert [s.tep_id for s in base.registered()] == [0x21, 0x22, 0x23, 0x24]
    assert base.get("tcpcrypt-x25519").tep_id == 0x23
    register_all()  # idempotent
    assert len(base.registered()) == 4


def test_register_all_clash(empty_registry: None) -> None:
    base.register(base.TepSpec(0x23, "someone-else", False, spec(0x23).factory))
    with pytest.raises(ValueError):
        register_all()


def test_import_registers_nothing() -> None:
    code = (
        "import testbed.teps.tcpcrypt, testbed.teps.base as b; "
        "assert not [s for s in b.registered() if s.name.startswith('tcpcrypt')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bench_handshakes_returns_figures() -> None:
    for resumed in (False, True):
        out = bench_handshakes(TepId.X25519, AeadId.AES_128_GCM, count=3, resumed=resumed)
        assert out["handshakes"] == 3 and out["resumed"] is resumed
        assert out["handshakes_per_s"] > 0
        assert out["client_cpu_s_per_handshake"] >= 0 and out["server_cpu_s_per_handshake"] >= 0
    with pytest.raises(ValueError):
        bench_handshakes(count=0)


def test_cold_bench_handshakes_sleep_before_each_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    from testbed.teps import benchflights

    slept: list[float] = []
    monkeypatch.setattr(benchflights.time, "sleep", slept.append)
    for resumed in (False, True):
        out = bench_handshakes(count=2, resumed=resumed, idle_s=0.5)
        # Client: Init1 (or the SYN's suboption), then its keys; server: its answer and keys.
        assert len(out["client_cpu_s_per_flight"]) == 2
        assert len(out["server_cpu_s_per_flight"]) == 1 and out["idle_s"] == 0.5
    assert slept == [0.5] * 3 * 2 * 2
    with pytest.raises(ValueError, match="idle_s"):
        bench_handshakes(count=1, idle_s=-0.1)


def test_bench_framing_returns_figures() -> None:
    out = bench_framing(AeadId.CHACHA20_POLY1305, chunk_size=1000, total_bytes=10_000)
    assert out["bytes"] == 10_000 and out["overhead_bytes_per_frame"] == 20
    assert out["seal_mb_per_s"] > 0 and out["open_mb_per_s"] > 0
    with pytest.raises(ValueError):
        bench_framing(chunk_size=70_000)


def test_bench_all_shape() -> None:
    out = bench_all(handshakes=1, framing_bytes=20_000)
    assert len(out["handshakes"]) == 8 and len(out["framing"]) == 3
