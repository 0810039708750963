"""The catalogue, parameters and the iptables rule text of every model (no root needed)."""

from __future__ import annotations

import re

import pytest

import middleboxes
from middleboxes import base
from middleboxes.iptables import (
    IptablesBox,
    StripEnoSyn,
    chain_name,
    parse_kinds,
    unknown_kinds,
)
from middleboxes.nfqboxes import NfqBox, packet_model_names
from testbed.errors import ConfigError

MODELS = {
    "passthrough", "strip-eno-syn", "strip-eno-synack", "strip-eno-ack", "strip-eno-all",
    "strip-unknown-options", "drop-syn-unknown-option", "rst-syn-unknown-option",
    "isn-rewrite", "resegment", "tcp-proxy", "dpi-443", "tls12-strict", "tls-mitm", "tamper",
    "drop-syn-data", "strip-syn-data", "replay-syn",
}


def ipt(spec: str) -> IptablesBox:
    box = middleboxes.create(spec)
    assert isinstance(box, IptablesBox)
    return box


def test_catalogue_lists_every_model_with_evidence_and_mechanism() -> None:
    entries = {e["name"]: e for e in middleboxes.catalogue()}
    assert set(entries) == MODELS
    for entry in entries.values():
        assert entry["description"] and entry["evidence"] and entry["mechanism"]
        assert len(entry["description"]) < 200
    assert entries["strip-eno-all"]["aliases"] == ["strip-eno"]
    assert "strip-eno" in middleboxes.names()


def test_alias_creates_the_target_model() -> None:
    box = middleboxes.create("strip-eno")
    assert box.name == "strip-eno-all"
    with pytest.raises(ValueError):
        base.register_alias("strip-eno", "passthrough")


def test_spec_items_without_equals_continue_a_list_value() -> None:
    assert base.parse_spec("x:known=2,3,8,port=1") == ("x", {"known": "2,3,8", "port": "1"})
    with pytest.raises(ConfigError, match="bad middlebox parameter '2'"):
        base.parse_spec("x:2,3")


def test_parameters_are_coerced_and_unknown_ones_refused() -> None:
    box = middleboxes.create("resegment:split=64,coalesce=no,hold_ms=1")
    assert box.params == {"split": 64, "coalesce": False, "hold_ms": 1.0, "mtu": 1500}
    with pytest.raises(ConfigError, match="no parameter"):
        middleboxes.create("tamper:ratio=1")
    with pytest.raises(ConfigError, match="not a int"):
        middleboxes.create("dpi-443:port=https")
    with pytest.raises(ConfigError, match="unknown middlebox"):
        middleboxes.create("firewall")


def test_nfqueue_boxes_refuse_bad_values_before_installing() -> None:
    with pytest.raises(ConfigError, match="direction"):
        middleboxes.create("tamper:direction=up")


def test_every_parameter_of_every_box_has_a_range() -> None:
    for name in base.names():
        cls = base._REGISTRY[base.resolve(name)]
        for key in cls.defaults:  # type: ignore[attr-defined]
            assert cls.param_range(key) is not None, (name, key)  # type: ignore[attr-defined]
        middleboxes.create(name)  # the defaults are inside their own ranges


@pytest.mark.parametrize("spec,problem", [
    ("tamper:rate=5", "rate=5.0 is out of range"),
    ("tamper:rate=-1", "rate=-1.0 is out of range"),
    ("tamper:direction=sideways", "direction='sideways' is not one of"),
    ("tamper:port=70000", "port=70000 is out of range"),
    ("tamper:skip=-5", "skip=-5 is out of range"),
    ("dpi-443:port=0", "port=0 is out of range"),
    ("resegment:split=-1", "split=-1 is out of range"),
    ("resegment:split=0,coalesce=no", "changes nothing"),
    ("resegment:mtu=20", "mtu=20 is out of range"),
    ("resegment:hold_ms=-2", "hold_ms=-2.0 is out of range"),
    ("isn-rewrite:offset=4294967296", "offset=4294967296 is out of range"),
    ("strip-eno-syn:kind=1", "kind=1 is out of range"),
    ("strip-unknown-options:known=2,x", "comma list of integers"),
    ("strip-unknown-options:known=2,300", "0..255"),
    ("tcp-proxy:listen=0", "listen=0 is out of range"),
])
def test_out_of_range_parameters_are_refused_with_the_range(spec: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)) as err:
        middleboxes.create(spec)
    assert "\n" not in err.value.one_line()


def test_in_range_edges_are_accepted() -> None:
    assert middleboxes.create("tamper:rate=0").params["rate"] == 0.0
    assert middleboxes.create("tamper:rate=1,direction=s2c").params["rate"] == 1.0
    assert middleboxes.create("resegment:split=0").params["split"] == 0  # coalescing only


def test_strip_eno_syn_install_and_removal_scripts() -> None:
    box = StripEnoSyn()
    assert box.install_script() == (
        "*mangle\n"
        ":MB_STRIP_ENO_SYN - [0:0]\n"
        "-A FORWARD -j MB_STRIP_ENO_SYN\n"
        "-A MB_STRIP_ENO_SYN -p tcp\n"
        "-A MB_STRIP_ENO_SYN -p tcp --tcp-flags SYN,ACK SYN --tcp-option 69 -j TCPOPTSTRIP "
        "--strip-options 69\n"
        "COMMIT\n"
    )
    assert box.removal_script() == (
        "*mangle\n-D FORWARD -j MB_STRIP_ENO_SYN\n-F MB_STRIP_ENO_SYN\n-X MB_STRIP_ENO_SYN\n"
        "COMMIT\n"
    )


def test_strip_eno_kind_is_a_parameter() -> None:
    script = ipt("strip-eno-synack:kind=253").install_script()
    assert "--tcp-flags SYN,ACK SYN,ACK --tcp-option 253 -j TCPOPTSTRIP --strip-options 253" \
        in script


def test_strip_eno_ack_selects_the_first_original_direction_segment() -> None:
    script = ipt("strip-eno-ack").install_script()
    assert "--ctdir ORIGINAL" in script and "--tcp-flags SYN NONE" in script
    assert "-j CONNMARK --set-xmark 0x400000/0x400000" in script
    strip_line = next(line for line in script.splitlines() if "TCPOPTSTRIP" in line)
    assert "-m connmark --mark 0/0x400000" in strip_line


def test_unknown_option_boxes_build_one_rule_per_unknown_kind() -> None:
    assert unknown_kinds("2,3,4,5,8") == [k for k in range(256) if k not in (0, 1, 2, 3, 4, 5, 8)]
    drop = ipt("drop-syn-unknown-option:known=2,3,4,5,8,34")
    rules = drop.rules()
    assert rules[0].args[-1] == drop.chain("syn") and "SYN,ACK" in rules[0].args
    assert len(rules) == 1 + 248
    assert all(rule.args[-2:] == ("-j", "DROP") for rule in rules[1:])
    assert "34" not in {rule.args[3] for rule in rules[1:]}
    rst = ipt("rst-syn-unknown-option").rules()
    assert rst[1].args[-4:] == ("-j", "REJECT", "--reject-with", "tcp-reset")
    strip = ipt("strip-unknown-options").install_script()
    assert "--strip-options 6,7,9," in strip and ",69," in strip
    with pytest.raises(ConfigError):
        parse_kinds("2,300")


def test_chain_names_fit_iptables_and_stay_unique() -> None:
    names = set()
    for model in MODELS:
        for _, chain in ipt(model).chains():
            assert len(chain) <= 28
            names.add(chain)
    assert len(chain_name("drop-syn-unknown-option", "syn")) == 28
    assert chain_name("drop-syn-unknown-option", "syn") != chain_name("rst-syn-unknown-option",
                                                                      "syn")
    assert len(names) >= len(MODELS)


@pytest.mark.parametrize("name", ["isn-rewrite", "resegment", "tamper", "dpi-443",
                                  "tls12-strict", "drop-syn-data", "strip-syn-data",
                                  "replay-syn"])
def test_nfqueue_rules_have_no_bypass(name: str) -> None:
    box = middleboxes.create(name)
    assert isinstance(box, NfqBox)
    script = box.install_script()
    assert f"-j NFQUEUE --queue-num {box.queue}" in script
    assert "bypass" not in script
    assert box.model in packet_model_names()


def test_port_boxes_queue_only_their_port() -> None:
    rules = [r.args for r in ipt("tls12-strict:port=8443").rules()]
    assert [a[:4] for a in rules] == [("-p", "tcp", "--dport", "8443"),
                                      ("-p", "tcp", "--sport", "8443")]


def test_syn_data_boxes_queue_only_syn_segments() -> None:
    for name in ("drop-syn-data", "strip-syn-data"):
        (rule,) = ipt(name).rules()
        assert rule.args[:6] == ("-p", "tcp", "--tcp-flags", "SYN", "SYN", "-j")
    (rule,) = ipt("replay-syn").rules()
    assert rule.args[:3] == ("-p", "tcp", "--syn")  # client SYNs: SYN set, ACK/RST/FIN clear
    with pytest.raises(ConfigError, match="copies=0 is out of range"):
        middleboxes.create("replay-syn:copies=0")


def test_proxies_redirect_in_nat_prerouting() -> None:
    script = ipt("tcp-proxy").install_script()
    assert "*nat\n" in script and "-A PREROUTING -j MB_TCP_PROXY" in script
    assert "-A MB_TCP_PROXY -p tcp -j REDIRECT --to-ports 15000" in script
    mitm = ipt("tls-mitm").install_script()
    assert "-p tcp --dport 443 -j REDIRECT --to-ports 15443" in mitm


def test_counters_before_install_are_zero() -> None:
    for model in MODELS:
        assert middleboxes.create(model).counters() == {
            "seen": 0, "changed": 0, "dropped": 0, "reset": 0}
