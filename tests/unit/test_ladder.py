"""Ladder diagrams (testbed/ladder.py, testbed/ladder_draw.py) over the committed captures of
tests/data/arms/ (client-side captures, `tcpinc probe --rtt 10ms --response-size 256`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from testbed import cli
from testbed.ladder import Arrow, arrows, negotiated_tep
from testbed.net.flows import Connection, connections
from testbed.net.pcap import read_segments

ARMS = Path(__file__).resolve().parents[1] / "data" / "arms"


def conn(arm: str, index: int = 0) -> Connection:
    return list(connections(read_segments(ARMS / f"{arm}.pcap")).values())[index]


def labels(items: list[Arrow]) -> list[tuple[str, str]]:
    return [(a.direction, a.label.replace("\n", " | ")) for a in items]


def test_tcpcrypt_ladder_names_every_message() -> None:
    c = conn("tcpcrypt")
    assert negotiated_tep(c) == 0x23
    got = labels(arrows(c))
    assert got[:9] == [
        ("c2s", "SYN | ENO[tcpcrypt-P521 tcpcrypt-P256 tcpcrypt-X448 tcpcrypt-X25519]"),
        ("s2c", "SYN-ACK | ENO[b=1 tcpcrypt-X25519]"),
        ("c2s", "ACK | ENO"),
        ("c2s", "PSH | ENO | Init1"),
        ("s2c", "ACK"),
        ("s2c", "PSH | Init2"),
        ("c2s", "ACK"),
        ("c2s", "PSH | frame (12 B)"),  # the 12-byte request
        ("s2c", "PSH | frame (256 B)"),  # the 256-byte response
    ]
    assert len(got) == len(c.segments)


def test_time_is_to_scale() -> None:
    c = conn("tcpcrypt")
    items = arrows(c)
    syn, synack = items[0], items[1]
    owd = (synack.t_recv - syn.t_send) / 2  # half the SYN/SYN-ACK round trip
    for arrow, cs in zip(items, c.segments, strict=True):
        seen = cs.t  # the client-side capture fixes the client end exactly
        assert (arrow.t_send if arrow.direction == "c2s" else arrow.t_recv) == seen
        assert arrow.t_recv - arrow.t_send == pytest.approx(owd, abs=1e-12)


def test_server_capture_gives_the_far_ends(tmp_path: Path) -> None:
    pcap = tmp_path / "x.pcap"
    shutil.copy(ARMS / "tcpcrypt.pcap", pcap)
    shutil.copy(ARMS / "tcpcrypt.pcap", tmp_path / "x-server.pcap")  # a twin at zero delay
    from testbed.ladder_draw import load

    c, server_times = load(pcap, 0)
    assert server_times is not None
    assert all(a.t_send == a.t_recv for a in arrows(c, server_times))


def test_resumption_early_data_and_tfo() -> None:
    resumed = labels(arrows(conn("tcpcrypt-resume", 1)))
    assert resumed[0] == ("c2s", "SYN | ENO[tcpcrypt-X25519+17B]")
    assert resumed[1] == ("s2c", "SYN-ACK | ENO[b=1 tcpcrypt-X25519+17B]")
    assert not any("Init" in text for _, text in resumed)  # §3.5: no Init1/Init2
    zero_rtt = labels(arrows(conn("tls-0rtt", 1)))
    assert ("c2s", "PSH | ENO | ClientHello; ChangeCipherSpec; 0-RTT early data (29 B)"
            ) in zero_rtt
    assert labels(arrows(conn("plain-tfo", 1)))[0] == (
        "c2s", "SYN | early data in SYN: 12 B app data")


def test_cli_draws_png_and_svg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    svg, png = tmp_path / "l.svg", tmp_path / "l.png"
    assert cli.main(["ladder", str(ARMS / "tcpcrypt.pcap"), "--out", str(svg)]) == 0
    assert cli.main(["ladder", str(ARMS / "tls.pcap"), "--conn", "0", "--out", str(png)]) == 0
    assert "Init1" in svg.read_text() or "<svg" in svg.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '"segments": 15' in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["--out", "{tmp}/l.pdf"], ".pdf"),
    (["--conn", "3", "--out", "{tmp}/l.png"], "--conn 0..0"),
    (["--out", "{tmp}/missing/l.png"], "does not exist"),
])
def test_cli_errors_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  argv: list[str], words: str) -> None:
    args = [a.format(tmp=tmp_path) for a in argv]
    assert cli.main(["ladder", str(ARMS / "tls.pcap"), *args]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and words in err
    assert not list(tmp_path.rglob("l.*"))


def test_cli_error_on_a_file_that_is_not_a_pcap(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "x.pcap"
    bogus.write_bytes(b"not a capture")
    assert cli.main(["ladder", str(bogus), "--out", str(tmp_path / "l.png")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "l.png").exists()


def test_report_section_draws_one_ladder_per_arm(tmp_path: Path) -> None:
    from experiments.ladders import section_ladders

    arms = tmp_path / "arms"
    arms.mkdir()
    for arm in ("tcpcrypt", "tcpcrypt-resume"):
        shutil.copy(ARMS / f"{arm}.pcap", arms / f"{arm}.pcap")
    text = "\n".join(section_ladders(tmp_path, arms))
    assert "![tcpcrypt](ladders/tcpcrypt.png)" in text
    assert "`" in text and "connection 1" in text  # the resumed connection of the -resume arm
    assert sorted(p.name for p in (tmp_path / "ladders").iterdir()) == [
        "drawn.json", "tcpcrypt-resume.png", "tcpcrypt.png"]


def test_report_section_draws_a_ladder_again_only_when_its_sources_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments import ladders

    arms = tmp_path / "arms"
    arms.mkdir()
    for arm in ("tcpcrypt", "tcpcrypt-resume"):
        shutil.copy(ARMS / f"{arm}.pcap", arms / f"{arm}.pcap")
    drawn: list[str] = []
    real = ladders.render

    def counting(pcap: Path, out: Path, index: int = 0, title: str = "") -> dict[str, object]:
        drawn.append(out.name)
        return real(pcap, out, index, title=title)

    monkeypatch.setattr(ladders, "render", counting)
    first = ladders.section_ladders(tmp_path, arms)
    assert sorted(drawn) == ["tcpcrypt-resume.png", "tcpcrypt.png"]
    assert ladders.section_ladders(tmp_path, arms) == first  # nothing drawn, same text
    assert len(drawn) == 2
    # A changed capture, a missing image and a damaged record are each drawn again.
    shutil.copy(ARMS / "tcpcrypt.pcap", arms / "tcpcrypt-resume.pcap")
    (tmp_path / "ladders" / "tcpcrypt.png").unlink()
    ladders.section_ladders(tmp_path, arms)
    assert sorted(drawn[2:]) == ["tcpcrypt-resume.png", "tcpcrypt.png"]
    (tmp_path / "ladders" / "drawn.json").write_text("{not json")
    ladders.section_ladders(tmp_path, arms)
    assert len(drawn) == 6
