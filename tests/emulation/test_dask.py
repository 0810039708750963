"""The dask executor runs real emulation points: a LocalCluster worker (a separate
process, as root, ``tcpinc=1``) produces the run directory a local run produces."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

ARGS = ["roundtrips", "--quick", "--repeat", "2", "--protocols", "plain,tcpcrypt",
        "--run-id", "r"]


def tcpinc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *args], capture_output=True,
                          text=True, timeout=300, check=False)


def _records(run: Path) -> list[tuple[Any, ...]]:
    out = []
    for line in (run / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        pcap = str(Path(r["pcap"]).relative_to(run)) if r["pcap"] else None
        out.append((r["proto"], r["conn"], r["warmup"], r["outcome"], r["bytes_ok"],
                    r["link_backend"], r["worker"]["link_backend"], pcap))
    return sorted(out, key=str)


def test_roundtrips_on_a_dask_worker_equal_a_local_run(tmp_path: Path) -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      resources={"tcpinc": 1}, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster:
        remote = tcpinc("run", *ARGS, "--out", str(tmp_path / "d"), "--executor", "dask",
                        "--scheduler", cluster.scheduler_address)
    local = tcpinc("run", *ARGS, "--out", str(tmp_path / "l"))
    assert remote.returncode == 0, remote.stderr
    assert local.returncode == 0, local.stderr
    d, lo = tmp_path / "d" / "roundtrips" / "r", tmp_path / "l" / "roundtrips" / "r"

    def files(run: Path) -> list[str]:
        return sorted(str(p.relative_to(run)) for p in run.rglob("*"))

    assert files(d) == files(lo)
    assert _records(d) == _records(lo)
    # The analysis. Flights come from the segments alone; rt_send/rt_resp also pick the
    # request segment by its timestamp, so on a loaded machine either run can count one
    # more for a connection: those (and what derives from them) are timings here.
    timing = ["rt_send_measured", "rt_resp_measured", "consistent", "agrees"]
    pd.testing.assert_frame_equal(pd.read_csv(d / "roundtrips.csv").drop(columns=timing),
                                  pd.read_csv(lo / "roundtrips.csv").drop(columns=timing))
    # One row per arm, ENO datapath and connection: the runs write them in the order their
    # points finished.
    per_conn = [pd.read_csv(run / "roundtrips_per_connection.csv")
                .sort_values(["proto", "eno_datapath", "conn"]).reset_index(drop=True)
                .drop(columns=["rt_send", "rt_resp"]) for run in (d, lo)]
    pd.testing.assert_frame_equal(*per_conn)
    # Every point's network is described (locally consecutive points may share one line).
    tags = [sorted(t for x in (run / "networks.jsonl").read_text().splitlines()
                   for t in json.loads(x)["tag"].split(",")) for run in (d, lo)]
    assert tags[0] == tags[1] and "plain" in tags[0]
    meta = json.loads((d / "metadata.json").read_text())
    assert meta["worker_mismatch"] is None and len(meta["workers"]) == 1
    assert meta["workers"][0]["root"] is True
