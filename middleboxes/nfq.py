"""The one NFQUEUE runner every packet model uses.

    python -m middleboxes.nfq --model NAME --params JSON --queue N --stats PATH

Binds queue N, prints ``ready``, and for each queued packet executes the model's
``Decision``: injected packets first (a raw IPPROTO_RAW socket, so they leave through the
node's OUTPUT path and are never queued again: the box's rules sit in FORWARD), then the
verdict. Timers (held segments) are served by the select() timeout. SIGTERM/SIGINT
raise ``Stop``; the runner then releases what the model still holds, unbinds and writes
the final counters. SIGUSR1 writes the counters without stopping.

The box's iptables rule has no --queue-bypass on purpose: if this process dies, the
queue has no listener and the kernel drops the box's packets, so a run through a dead box
fails (connections time out) instead of silently passing through an absent middlebox.
Network.check() then names the dead helper (docs/platform.md §6.2 describes
the drop; bypass would turn it into a pass-through).
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import time
from pathlib import Path
from typing import Any

from middleboxes.helper import StatsWriter
from middleboxes.pktmodel import PacketModel, create_model
from testbed import helperproc

QUEUE_MAX_LEN = 4096  # packets the kernel holds for us before it drops (default 1024)
SOCKET_BUFFER = 8 << 20


class Injector:
    """Sends complete IPv4 packets as they are (IPPROTO_RAW implies IP_HDRINCL)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def send(self, packet: bytes) -> None:
        dst = ".".join(str(b) for b in packet[16:20])
        self.sock.sendto(packet, (dst, 0))

    def close(self) -> None:
        self.sock.close()


class Runner:
    def __init__(self, model: PacketModel, injector: Injector) -> None:
        self.model = model
        self.injector = injector

    def on_packet(self, pkt: Any) -> None:
        """NetfilterQueue callback: exactly one verdict per packet."""
        decision = self.model.process(pkt.get_payload(), time.monotonic())
        for raw in decision.inject:
            self.injector.send(raw)
        if not decision.accept:
            pkt.drop()
            return
        if decision.replacement is not None:
            pkt.set_payload(decision.replacement)
        pkt.accept()

    def release_due(self) -> None:
        for raw in self.model.poll(time.monotonic()):
            self.injector.send(raw)

    def timeout(self) -> float | None:
        deadline = self.model.next_deadline()
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def snapshot(self) -> dict[str, Any]:
        extra = getattr(self.model, "kill_reasons", None)
        data: dict[str, Any] = {"model": self.model.name, "params": self.model.params,
                                "counters": self.model.counters.as_dict()}
        if extra is not None:
            data["kill_reasons"] = list(extra[-20:])
        return data


def serve(runner: Runner, queue: int) -> None:
    """Bind the queue and process packets until Stop is raised."""
    from netfilterqueue import NetfilterQueue

    nfq = NetfilterQueue()
    nfq.bind(queue, runner.on_packet, max_len=QUEUE_MAX_LEN, sock_len=SOCKET_BUFFER)
    try:
        fd = nfq.get_fd()
        helperproc.announce_ready()
        while True:
            readable, _, _ = select.select([fd], [], [], runner.timeout())
            if readable:
                nfq.run(block=False)
            runner.release_due()
    finally:
        for raw in runner.model.flush():
            runner.injector.send(raw)
        nfq.unbind()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--params", default="{}", help="JSON object of model parameters")
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    args = parser.parse_args(argv)
    model = create_model(args.model, json.loads(args.params))
    runner = Runner(model, Injector())
    writer = StatsWriter(args.stats, runner.snapshot)
    # Stop (SIGTERM from the network's helper teardown) is the normal way out.
    helperproc.run(lambda: serve(runner, args.queue), dump=writer.dump,
                   teardown=runner.injector.close, announce=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
