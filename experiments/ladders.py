"""The report's ladder diagrams: one per protocol arm, drawn by testbed/ladder_draw.py.

The reference runs keep no pcaps, so the ladders come from the small probe captures of every
arm committed in tests/data/arms/ (`tcpinc probe --rtt 10ms --response-size 256 --keylog`).
For arms whose point is the second connection (resumption, 0-RTT, TCP Fast Open) that one is
drawn; otherwise the first.

A drawing is made again only when what it is drawn from changed (``_digest``: the captures,
the connection, the title, the drawing code and matplotlib's version); otherwise the image
and its line of text from the last report stand (``drawn.json`` beside the images).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from testbed.ladder_draw import render
from testbed.net.flows import connections
from testbed.net.pcap import read_segments

ARMS = Path(__file__).resolve().parents[1] / "tests" / "data" / "arms"
SECOND_CONNECTION = ("-resume", "-0rtt", "-tfo")
REPO = Path(__file__).resolve().parents[1]
# The code a drawing depends on (testbed/ladder_draw.py and what it reads captures with).
DRAWING_CODE = ("testbed/ladder_draw.py", "testbed/ladder.py", "testbed/net/flows.py",
                "testbed/net/pcap.py", "testbed/eno/option.py")
STAMPS = "drawn.json"


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
        info = _drawn(pcap, image, index, f"{arm} (connection {index})")
        text += [f"### {arm}", "",
                 f"![{arm}](ladders/{image.name})", "",
                 f"`{_shown(pcap)}`, connection {index}: {info['connection']}, "
                 f"{info['segments']} segments.", ""]
    return text


def _digest(pcap: Path, index: int, title: str) -> str:
    """What a drawing is made from: both captures, the connection, the title and the code."""
    digest = hashlib.sha256(f"{index}\0{title}\0".encode())
    digest.update(importlib.metadata.version("matplotlib").encode())
    server = pcap.with_name(f"{pcap.stem}-server{pcap.suffix}")
    for path in [pcap, server, *(REPO / name for name in DRAWING_CODE)]:
        digest.update(f"\0{path.name}\0".encode())
        digest.update(path.read_bytes() if path.exists() else b"(none)")
    return digest.hexdigest()


def _drawn(pcap: Path, image: Path, index: int, title: str) -> dict[str, Any]:
    """``render``'s answer, drawing only when the image is missing or its sources changed
    (``drawn.json`` beside the images keeps each one's digest and answer)."""
    digest = _digest(pcap, index, title)
    stamps = image.parent / STAMPS
    try:
        saved = json.loads(stamps.read_text()) if stamps.exists() else {}
    except json.JSONDecodeError:  # a damaged record: every image is drawn again
        saved = {}
    entry = saved.get(image.name) if isinstance(saved, dict) else None
    if image.exists() and isinstance(entry, dict) and entry.get("digest") == digest:
        return {**entry["info"], "ladder": str(image)}
    info = render(pcap, image, index, title=title)
    saved = saved if isinstance(saved, dict) else {}
    saved[image.name] = {"digest": digest, "info": info}
    stamps.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
    return info


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(ARMS.parents[2]))
    except ValueError:
        return str(path)
