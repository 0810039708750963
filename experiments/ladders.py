"""The report's ladder diagrams: one per protocol arm, drawn by testbed/ladder_draw.py.

The reference runs keep no pcaps, so the ladders come from the small probe captures of every
arm committed in tests/data/arms/ (`tcpinc probe --rtt 10ms --response-size 256 --keylog`).
For arms whose point is the second connection (resumption, 0-RTT, TCP Fast Open) that one is
drawn; otherwise the first.
"""

from __future__ import annotations

from pathlib import Path

from testbed.ladder_draw import render
from testbed.net.flows import connections
from testbed.net.pcap import read_segments

ARMS = Path(__file__).resolve().parents[1] / "tests" / "data" / "arms"
SECOND_CONNECTION = ("-resume", "-0rtt", "-tfo")


def section_ladders(root: Path, arms_dir: Path = ARMS) -> list[str]:
    pcaps = sorted(p for p in arms_dir.glob("*.pcap") if not p.stem.endswith("-server"))
    text = ["## Ladder diagrams (one connection per arm)", ""]
    if not pcaps:
        return [*text, "No captures found.", ""]
    out_dir = root / "ladders"
    out_dir.mkdir(exist_ok=True)
    text += [f"Drawn with `tcpinc ladder` from the probe captures in `{_shown(arms_dir)}` "
             "(10 ms RTT, 12-byte request, 256-byte response; the reference runs keep no "
             "pcaps). Time runs downwards to scale; the server ends of the arrows sit half "
             "the SYN/SYN-ACK round trip from the client-side capture. Read the same "
             "captures in Wireshark with `tools/wireshark/tcpinc.lua` and their key logs.", ""]
    for pcap in pcaps:
        arm = pcap.stem
        count = len(connections(read_segments(pcap)))
        index = 1 if arm.endswith(SECOND_CONNECTION) and count > 1 else 0
        image = out_dir / f"{arm}.png"
        info = render(pcap, image, index, title=f"{arm} (connection {index})")
        text += [f"### {arm}", "",
                 f"![{arm}](ladders/{image.name})", "",
                 f"`{_shown(pcap)}`, connection {index}: {info['connection']}, "
                 f"{info['segments']} segments.", ""]
    return text


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(ARMS.parents[2]))
    except ValueError:
        return str(path)
