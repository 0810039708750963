"""syndata: the first-packet questions of IETF 93 at 100 ms RTT (`tcpinc run syndata`).

Data on the SYN (RFC 8547 §4.7) is defined by neither TCPINC design, so the arms that put a TEP's
first flight there are labelled variants (testbed/apps/proto_syn.py): ``tcpcrypt-syn`` (beyond
RFC 8548), ``tls-syn`` and ``tls-0rtt-syn`` (beyond the use-tls draft). This experiment runs
them beside their twins without SYN data and the plain-TCP references, fresh and resumed, all
at 100 ms RTT on the ``direct`` topology and all ENO arms on the nfqueue datapath (the only one
that judges SYN data), then

* per arm: median time to first response byte, the theory line and the round trips counted
  from the capture (experiments/common.py, ``round_trips``) against experiments/theory.py;
* per ``-syn`` arm: what it saved against its twin, which should be one RTT (target +-2 ms);
* replay (``replay`` points, middlebox topology through ``replay-syn``, 10 ms RTT): for each
  arm with a request on the SYN under ENO, how many replayed requests reached the server
  application (RFC 7413 §6.1, RFC 8446 §8, RFC 8548 §3.5): resumed tcpcrypt with single-use
  identifiers, TLS 0-RTT with OpenSSL's anti-replay on and off.

Not in ``tcpinc run all`` (the quick default stays within its time budget); the full latency
profile runs the ``-syn`` arms at every RTT too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.common import Measurement, NetworkPool, count_from_pcaps, counts_for_arm, measure
from experiments.runner import RunContext
from experiments.theory import THEORY_RTTS, ttfb_ms
from testbed.apps.transport import get_transport
from testbed.bench_replay import CLAIMS_PROTECTION, replayed_requests
from topologies import PathShape

NAME = "syndata"
RTT_MS = 100.0
PROFILES = {"quick": {"repeat": 8}, "full": {"repeat": 30}}
TWINS = {"tcpcrypt-syn": "tcpcrypt", "tcpcrypt-resume-syn": "tcpcrypt-resume",
         "tls-syn": "tls", "tls-0rtt-syn": "tls-0rtt"}
ARMS = ("plain", "plain-tfo", "tcpcrypt", "tcpcrypt-syn", "tcpcrypt-resume",
        "tcpcrypt-resume-syn", "tls", "tls-syn", "tls-0rtt", "tls-0rtt-syn")
# Arms with application data on the SYN under ENO (plain TFO and TLS without ENO: `tcpinc bench
# replay`). A copy must land after its original connection ended (a copy that meets the open
# connection is a mere duplicate), so the replay points run at 10 ms RTT.
REPLAY_ARMS = ("tcpcrypt-resume-syn", "tls-0rtt-syn", "tls-0rtt-syn-noantireplay")
REPLAY_BOX = "replay-syn:delay_ms=150"
REPLAY_RTT_MS = 10.0
REPLAY_GAP_MS = 250.0  # each copy lands while the next connection runs
TARGET_MS = 2.0  # a -syn arm saves one RTT against its twin, +- this


def points(profile: str) -> list[dict[str, Any]]:
    return ([{"proto": p} for p in ARMS]
            + [{"proto": p, "replay": True} for p in REPLAY_ARMS])


POOL = NetworkPool()


def close_run(ctx: RunContext) -> None:
    POOL.close(ctx)


def run_point(point: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    repeat = ctx.repeat or PROFILES[ctx.profile]["repeat"]
    proto = point["proto"]
    datapath = "nfqueue" if get_transport(proto).uses_eno else None
    if not point.get("replay"):
        m = Measurement(proto=proto, path=PathShape(rtt_ms=RTT_MS), connections=repeat,
                        eno_datapath=datapath)
        return measure(m, ctx, proto, POOL)
    m = Measurement(proto=proto, path=PathShape(rtt_ms=REPLAY_RTT_MS), connections=repeat,
                    topology="middlebox", middlebox=REPLAY_BOX, warmup=False,
                    gap_ms=REPLAY_GAP_MS, eno_datapath=datapath)
    records = measure(m, ctx, f"replay-{proto}", POOL)
    assert POOL.net is not None
    path = POOL.net.workdir / f"server-records-{m.port}.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] \
        if path.exists() else []
    replay = {**replayed_requests(lines), "claims_protection": CLAIMS_PROTECTION.get(proto)}
    for record in records:
        record["replay"] = replay
    return records


def _rounds(records: list[dict[str, Any]], run_dir: Path) -> pd.DataFrame:
    counted = pd.DataFrame(count_from_pcaps(records, run_dir))
    if counted.empty:
        return pd.DataFrame(columns=["proto", "rt_send", "rt_resp"])
    return counted.groupby("proto")[["rt_send", "rt_resp"]].agg(
        lambda s: s.mode().iloc[0] if s.notna().any() else None).reset_index()


def summarise(records: list[dict[str, Any]], run_dir: Path) -> pd.DataFrame:
    """One row per arm: TTFB, theory, counted round trips; for -syn arms the saving."""
    measured = [r for r in records if not r.get("replay") and counts_for_arm(r)]
    frame = pd.DataFrame(measured)
    rounds = _rounds(measured, run_dir).set_index("proto")
    rows = []
    for proto in ARMS:
        group = frame[frame["proto"] == proto] if not frame.empty else frame
        ok = group[group["bytes_ok"].astype(bool)] if not group.empty else group
        median = float(ok["ttfb_ms"].median()) if not ok.empty else None
        send, resp = THEORY_RTTS[proto]
        rt = rounds.loc[proto] if proto in rounds.index else None
        rows.append({
            "proto": proto, "n": len(ok), "failed": len(group) - len(ok),
            "ttfb_median_ms": median, "theory_ms": ttfb_ms(proto, RTT_MS),
            "rt_send": None if rt is None else rt["rt_send"],
            "rt_resp": None if rt is None else rt["rt_resp"],
            "rt_theory": f"{int(send)} / {int(resp)}",
            "agrees": rt is not None and (rt["rt_send"], rt["rt_resp"]) == (int(send), int(resp)),
            "variant_label": next(iter(ok["variant_label"].dropna()), None)
            if "variant_label" in ok and not ok.empty else None,
        })
    table = pd.DataFrame(rows)
    by_proto = table.set_index("proto")["ttfb_median_ms"]
    table["twin"] = table["proto"].map(TWINS)
    table["saved_ms"] = [by_proto.get(t) - m if isinstance(t, str) and m is not None
                         and by_proto.get(t) is not None else None
                         for t, m in zip(table["twin"], table["ttfb_median_ms"], strict=True)]
    table["one_rtt_saved"] = [None if s is None or pd.isna(s) else bool(abs(s - RTT_MS)
                                                                        <= TARGET_MS)
                              for s in table["saved_ms"]]
    return table


def replay_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows, seen = [], set()
    for r in records:
        if r.get("replay") and r["proto"] not in seen:
            seen.add(r["proto"])
            ok = sum(1 for x in records if x["proto"] == r["proto"] and x.get("replay")
                     and x.get("bytes_ok"))
            rows.append({"proto": r["proto"], "client_ok": ok, **r["replay"]})
    return pd.DataFrame(rows)


def analyse(run_dir: Path) -> dict[str, Any]:
    records = [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]
    table = summarise(records, run_dir)
    table.to_csv(run_dir / "syndata.csv", index=False, float_format="%.2f")
    replay = replay_table(records)
    replay.to_csv(run_dir / "replay.csv", index=False)
    syn = table[table["twin"].notna()]
    protected = replay[replay["claims_protection"] == True] if not replay.empty \
        else replay  # noqa: E712 (pandas column)
    return {
        "arms": len(table), "disagreements": int((~table["agrees"]).sum()),
        "one_rtt_saved": f"{int(syn['one_rtt_saved'].fillna(False).sum())}/{len(syn)}",
        "replayed_delivered_with_protection": int(protected["replayed_delivered"].sum())
        if not protected.empty else None,
    }


# --- the report's section -------------------------------------------------------------------

CAPTURES = Path(__file__).resolve().parents[1] / "tests" / "data" / "syn-arms"
LADDER_ARMS = (("tcpcrypt-syn", 0), ("tls-syn", 0), ("tcpcrypt-resume-syn", 1),
               ("tls-0rtt-syn", 1))


def _ms(value: object) -> str:
    return "-" if value is None or pd.isna(value) else f"{float(value):.1f} ms"  # type: ignore[arg-type]


def section(run: Path | None, root: Path) -> list[str]:
    """REPORT.md: the first-packet questions, from the newest syndata run (module docstring)."""
    lines = ["## Data on the SYN: the first-packet questions (RFC 8547 §4.7, labelled variants)",
             ""]
    if run is None or not (run / "syndata.csv").exists():
        return [*lines, "Not run yet (`tcpinc run syndata`).", ""]
    table = pd.read_csv(run / "syndata.csv")
    rel = run.relative_to(root) if run.is_relative_to(root) else run
    lines += [f"`tcpinc run syndata` (`results/{rel}`, {RTT_MS:g} ms RTT, `direct`, ENO arms on "
              "the nfqueue datapath; measured on the loaded 2-vCPU development machine, so the "
              "differences between arms are what to read). The `-syn` arms put the SYN TEP's "
              "first flight on the SYN (Linux no-cookie TFO, no TFO option beside ENO) and the "
              "server answers right behind its SYN-ACK; neither TCPINC design defines SYN data, "
              "so each is labelled beyond RFC 8548 or beyond the use-tls draft.", "",
              "| arm | TTFB median | theory | round trips counted (send / resp) | theory | "
              "saved vs twin |", "|---|---|---|---|---|---|"]
    for row in table.itertuples():
        counted = "-" if pd.isna(row.rt_send) else f"{int(row.rt_send)} / {int(row.rt_resp)}"
        saved = "" if pd.isna(row.twin) else f"{_ms(row.saved_ms)} vs `{row.twin}`"
        lines.append(f"| `{row.proto}` | {_ms(row.ttfb_median_ms)} | {_ms(row.theory_ms)} | "
                     f"{counted} | {row.rt_theory} | {saved} |")
    syn = table[table["twin"].notna()]
    met = int(syn["one_rtt_saved"].fillna(False).astype(bool).sum())
    lines += ["", f"Round trips counted from the captures disagree with theory for "
              f"{int((~table['agrees'].astype(bool)).sum())} of {len(table)} arms. Target: each "
              f"`-syn` arm one RTT ({RTT_MS:g} ms +- {TARGET_MS:g} ms) below its twin: met by "
              f"{met} of {len(syn)} here (host time on a loaded machine moves medians by more "
              "than 2 ms; the counted round trips are the exact check).", ""]
    lines += _replay_text(run) + _costs_text() + _ladders(root)
    return lines


def _replay_text(run: Path) -> list[str]:
    path = run / "replay.csv"
    if not path.exists():
        return []
    replay = pd.read_csv(path)
    out = ["**Replay** (`replay-syn` copies each client SYN with data 150 ms later, from the "
           f"box, {REPLAY_RTT_MS:g} ms RTT; requests the server application received twice; "
           "plain TFO and TLS without ENO: `tcpinc bench replay`, README):", ""]
    for row in replay.itertuples():
        out.append(f"- `{row.proto}`: {int(row.replayed_delivered)} replayed requests "
                   f"delivered of {int(row.distinct_requests)} requests, "
                   f"{int(row.server_connections)} server connections (claims protection: "
                   f"{row.claims_protection})")
    return [*out, ""]


def _costs_text() -> list[str]:
    return [
        "**What each pays.** `tcpcrypt-syn` and `tls-syn` carry no application data on the SYN: "
        "Init1 and the ClientHello are public, the keys still bind the ENO transcript "
        "(RFC 8548 §3.3; the TLS exporter context), a replayed SYN makes the server answer a "
        "client that resets, and nothing reaches an application twice. They save one RTT "
        "(1 / 2 instead of 2 / 3) and pay in what the first packet meets: a box dropping SYNs "
        "with data costs the SYN timeout (1 s, then a SYN without data), one stripping the data "
        "makes the client's kernel send it again behind its ACK (half a round trip), and the "
        "§4.7 abort rule turns a SYN-ACK without ENO after SYN data into a reset and a second "
        "connection without ENO. The server also acts before ENO is final: it starts the SYN "
        "TEP at the SYN and resets if A's first ACK then lacks ENO (§4.6 rule 1), so a path "
        "stripping ENO from that ACK alone, where the twins fall back to plain TCP, fails the "
        "`-syn` arms' connections with a reset (fallback matrix, `strip-eno-ack`). "
        "`tls-0rtt-syn` reaches one RTT (0 / 1) by also putting the request on the SYN as "
        "0-RTT data, which has no forward secrecy (PSK only) and is replayable unless the "
        "server refuses a ticket's second use: with OpenSSL's anti-replay the replayed "
        "requests reached the application 0 times, without it (`tls-0rtt-syn-noantireplay`) "
        "every copy that landed did, and ENO's confirmation comes too late to stop it (the "
        "server answers 0-RTT data before A's ACK). `tcpcrypt-resume-syn` (0 / 1) puts the "
        "resumed request on the SYN under keys from ss[i] and nonce_a alone (the server "
        "answers with no nonce_b, so its SYN-ACK adds nothing to the keys): against RFC 8548 "
        "§3.5 it gives up replay protection at the key level (a copy of the SYN derives the "
        "same keys; only the single-use identifiers stop it, as tickets do for TLS, and the "
        "replay points above count what reached the application) and forward secrecy per "
        "resumption step for as long as either end keeps ss[i] after the SYN's keys are "
        "derived (README, Data on the SYN).", ""]


def _ladders(root: Path) -> list[str]:
    from testbed.ladder_draw import render

    out_dir = root / "ladders"
    out = ["**Ladders** (`tcpinc ladder`, client-side probe captures in "
           "`tests/data/syn-arms/`, 10 ms RTT, 256-byte response; to scale, so host time "
           "shows; the resumed arms' second connection): Init1 / the ClientHello / the "
           "request ride on the SYN, and the server's answer follows its SYN-ACK before the "
           "client's ACK arrives.", ""]
    for arm, index in LADDER_ARMS:
        pcap = CAPTURES / f"{arm}.pcap"
        if not pcap.exists():
            continue
        out_dir.mkdir(exist_ok=True)
        image = out_dir / f"{arm}.png"
        render(pcap, image, index, title=f"{arm} (connection {index})")
        out.append(f"![{arm}](ladders/{image.name})")
    return [*out, ""]
