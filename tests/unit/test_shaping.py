import pytest

from testbed.errors import ConfigError, KernelFeatureError
from testbed.net import shaping
from testbed.net.shaping import LinkShape, LinkSpec, netem_command


@pytest.mark.parametrize(
    "text,ms", [("50ms", 50.0), ("0.2s", 200.0), ("300us", 0.3), ("7", 7.0), (12, 12.0)]
)
def test_parse_time(text, ms):
    assert shaping.parse_time_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["-5ms", "fast", "5 lightyears", ""])
def test_parse_time_rejects(text):
    with pytest.raises(ConfigError):
        shaping.parse_time_ms(text)


@pytest.mark.parametrize(
    "text,bps", [("100mbit", 100_000_000), ("1gbit", 10**9), ("10kbit", 10_000),
                 ("1mbps", 8_000_000), ("500", 500)]
)
def test_parse_rate(text, bps):
    assert shaping.parse_rate_bps(text) == bps


@pytest.mark.parametrize("text", ["0mbit", "-1mbit", "lots"])
def test_parse_rate_rejects(text):
    with pytest.raises(ConfigError):
        shaping.parse_rate_bps(text)


def test_parse_loss():
    assert shaping.parse_loss("0.5%") == pytest.approx(0.005)
    assert shaping.parse_loss(10) == pytest.approx(0.10)
    for bad in ("100%", "-1%", "101", "x%"):
        with pytest.raises(ConfigError):
            shaping.parse_loss(bad)


def test_link_shape_validation_and_unknown_keys():
    with pytest.raises(ConfigError):
        LinkShape(delay_ms=-1)
    with pytest.raises(ConfigError):
        LinkShape(loss=1.0)
    with pytest.raises(ConfigError):
        LinkShape(rate_bps=0)
    with pytest.raises(ConfigError, match="use_htb"):
        LinkShape.from_dict({"delay_ms": 5, "use_htb": True})
    with pytest.raises(TypeError):
        LinkShape(5.0)  # type: ignore[misc]  # keyword-only
    assert LinkShape.from_dict({"delay_ms": 5}).delay_ms == 5


def test_identity_and_lossy():
    assert LinkSpec().is_identity
    assert not LinkSpec.symmetric(LinkShape(delay_ms=1)).is_identity
    assert LinkSpec(a2b=LinkShape(loss=0.01)).lossy


def test_netem_command_builder():
    shape = LinkShape(delay_ms=25, jitter_ms=2, loss=0.005, rate_bps=100_000_000,
                      queue_packets=500)
    assert netem_command("c-eth0", shape) == [
        "tc", "qdisc", "replace", "dev", "c-eth0", "root", "netem", "limit", "500",
        "delay", "25ms", "2ms", "loss", "0.5%", "rate", "100000000bit",
    ]
    assert netem_command("x", LinkShape()) == ["tc", "qdisc", "replace", "dev", "x", "root",
                                               "netem"]


def test_choose_backend(monkeypatch):
    monkeypatch.setattr(shaping, "netem_available", lambda: False)
    assert shaping.choose_backend("auto") == "userspace"
    assert shaping.choose_backend("userspace") == "userspace"
    with pytest.raises(KernelFeatureError, match="netem"):
        shaping.choose_backend("netem")
    with pytest.raises(ConfigError):
        shaping.choose_backend("magic")
    monkeypatch.setattr(shaping, "netem_available", lambda: True)
    assert shaping.choose_backend("auto") == "netem"


def test_whole_float_rates_are_integers_and_fractions_refused():
    """A float rate from the Python API reaches the delay line as an integer (a float in its
    argument made it exit); a fractional, infinite or non-numeric value is refused at once."""
    from testbed.net.delayhelper import shape_arg
    from topologies import PathShape

    shape = LinkShape(rate_bps=1e8, queue_packets=100.0)  # type: ignore[arg-type]
    assert shape.rate_bps == 100_000_000 and type(shape.rate_bps) is int
    assert shape.queue_packets == 100 and type(shape.queue_packets) is int
    assert "rate_bps=100000000,queue_packets=100," in shape_arg(shape)
    assert PathShape(rate_bps=2.5e6).rate_bps == 2_500_000  # type: ignore[arg-type]
    for bad in ({"rate_bps": 1.5}, {"rate_bps": float("inf")}, {"queue_packets": 9.5},
                {"rate_bps": "100mbit"}, {"rate_bps": True}, {"delay_ms": float("nan")}):
        with pytest.raises(ConfigError):
            LinkShape(**bad)
    for bad_path in ({"rate_bps": 0.5}, {"rtt_ms": -1.0}, {"loss": 1.0}, {"queue_packets": 0}):
        with pytest.raises(ConfigError):
            PathShape(**bad_path)
