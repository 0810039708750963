"""What the bulk and web experiments share: unmodified programs over an emulated path, with
each arm's transparent proxies (testbed/transparent/) or none.

Arms: ``plain`` (no proxy: the kernel's TCP end to end), ``proxy-plain`` (both proxies in
the path with ENO off: what the proxy itself costs), ``tcpcrypt`` and ``tls`` (both proxies,
ENO with that TEP, opportunistic). Each point gets a fresh ``direct`` network.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.runner import RunContext
from testbed.net.network import NetConfig, Network
from testbed.transparent.host import ProxySpec, TransparentHost, transparent
from topologies import PathShape, create

# arm -> (proxy protocol, policy); None: no proxy.
ARMS: dict[str, tuple[str, str] | None] = {
    "plain": None,
    "proxy-plain": ("plain", "off"),
    "tcpcrypt": ("tcpcrypt", "opportunistic"),
    "tls": ("tls", "opportunistic"),
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


@contextmanager
def arm_network(arm: str, path: PathShape, ctx: RunContext, listen_ports: tuple[int, ...]
                ) -> Iterator[tuple[Network, dict[str, TransparentHost]]]:
    """A fresh direct network with ``arm``'s proxies (if any) for the block."""
    config = ARMS[arm]
    with Network(create("direct", path=path),
                 NetConfig(link_backend=ctx.link_backend, seed=ctx.seed)) as net:
        if config is None:
            yield net, {}
            return
        proto, policy = config
        specs = {"client": ProxySpec(proto=proto, policy=policy),
                 "server": ProxySpec(proto=proto, policy=policy, listen_ports=listen_ports)}
        with transparent(net, specs, eno_datapath=ctx.eno_datapath) as hosts:
            yield net, hosts


def wait_listening(net: Network, node: str, port: int, timeout: float = 20.0) -> None:
    """Until something listens on ``node``'s TCP ``port`` (an application started by argv
    has no ready line)."""
    deadline = time.monotonic() + timeout
    while f":{port} " not in net.run(node, ["ss", "-Hltn", f"sport = :{port}"]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {node}:{port} after {timeout:.0f} s")
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proxy_cpu(hosts: dict[str, TransparentHost]) -> dict[str, float]:
    return {node: cpu_seconds(host.proc.pid) for node, host in hosts.items()}


def datapath_of(hosts: dict[str, TransparentHost]) -> str | None:
    """The ENO datapath the arm's proxies ran on (None: no proxy or no ENO)."""
    return next((h.eno_datapath for h in hosts.values() if h.eno_datapath), None)


def proxy_outcomes(hosts: dict[str, TransparentHost]) -> list[dict[str, Any]]:
    """The client proxy's connection records, once every pair has been closed."""
    if "client" not in hosts:
        return []
    hosts["client"].wait_idle()
    return hosts["client"].records()


def describe(net: Network) -> dict[str, Any]:
    applied = net.applied_delay()
    one_way = [d.get("median_ms") for link in applied.values() for d in link.values()]
    helper = getattr(net, "delay_helper", None)
    return {"link_backend": net.backend,
            "delay_helper": getattr(helper, "name", None),
            "applied_rtt_ms": sum(one_way) if one_way and None not in one_way else None}


# -- analysis and report, shared by bulk.py and web.py ------------------------------------


def load_records(run_dir: Path) -> pd.DataFrame:
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    return pd.DataFrame([json.loads(line) for line in lines if line.strip()])


def outcomes_of(series: pd.Series) -> str:
    """The outcomes of a group's points, each a list of the proxies' outcomes."""
    return ",".join(sorted({o for value in series for o in value}))


def against_plain(summary: pd.DataFrame, keys: list[str], column: str,
                  compare: Callable[[float, float], float]) -> list[float | None]:
    """``compare(arm's value, plain's value)`` of ``column`` for each row of ``summary``,
    plain taken at the same ``keys`` (the same path); None where plain did not run."""
    plain = summary[summary["proto"] == "plain"].set_index(keys)[column]
    out: list[float | None] = []
    for row in summary.to_dict("records"):
        where = tuple(row[k] for k in keys)
        out.append(compare(row[column], plain.loc[where]) if where in plain.index else None)
    return out


def report_section(title: str, run: Path, root: Path, name: str, note: str,
                   cols: list[str]) -> list[str]:
    """A REPORT.md section: the plot, where the data is and the summary table."""
    summary = pd.read_csv(run / f"{name}_summary.csv")
    rel = run.relative_to(root)
    lines = [f"## {title}", "", f"![{name}]({rel / f'{name}.png'})", "",
             f"Data: `{rel / f'{name}_summary.csv'}` ({note}).", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in summary[cols].itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v)
                                       for v in row) + " |")
    return [*lines, ""]
