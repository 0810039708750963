"""CI regression of middlebox behaviour: the fallback matrix against its committed table.

Runs the fallback experiment (quick profile: one arm per design, every middlebox
model, opportunistic and required policies) and compares each protocol x policy x
middlebox outcome with tests/data/expected_fallback_matrix.csv. A changed outcome
fails with the list of cells that moved. Each middlebox model is its own test (per ENO
datapath): the models' cells are independent (the fallback experiment builds one network
per model anyway), so a parallel test run spreads them over its workers, and
tests/unit/test_middlebox_matrix_cells.py checks that the table holds exactly the quick
profile's cells (one that appeared or vanished). After an intended change, regenerate the table with
`python -m tests.emulation.test_middlebox_matrix --update`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from testbed.eno.bpf.attach import support_problem

EXPECTED = Path(__file__).parents[1] / "data" / "expected_fallback_matrix.csv"
KEY = ["proto", "policy", "middlebox"]
# Models whose damage lands on a random bit: which check trips first (a tag, a length that
# now promises more bytes, a reset) varies, so only the outcome family is compared.
RANDOM_DAMAGE = ("tamper",)


def _family(outcome: object, middlebox: str) -> object:
    if isinstance(outcome, str) and middlebox.startswith(RANDOM_DAMAGE):
        return outcome.split(":")[0].replace("plaintext-corrupted", "failed")
    return outcome


def quick_boxes() -> list[str]:
    """The middlebox specs of the quick matrix, in the experiment's order."""
    from experiments import fallback

    return list(dict.fromkeys(p["middlebox"] for p in fallback.points("quick")))


def longest_first(boxes: list[str]) -> list[str]:
    """``boxes`` with the most quick-profile points first (the SYN-data arms meet only some
    models), the rest in their order: a parallel run hands tests out in collection order, so
    the longest cells start first instead of running on alone at the end."""
    from experiments import fallback

    points = Counter(p["middlebox"] for p in fallback.points("quick"))
    return sorted(boxes, key=lambda box: -points[box])


def datapath_free(point: dict[str, Any]) -> bool:
    """Whether a point of the quick matrix does the same work whatever the run's ENO datapath:
    the SYN-data arms run on nfqueue on both (testbed.workload.needs_hook), and ``plain``, the
    first point on each model's network (experiments/fallback.py), runs before any ENO arm
    attached the bpf program to a host. The bpf run leaves them to the nfqueue run."""
    from testbed.workload import needs_hook

    return point["proto"] == "plain" or needs_hook(point["proto"]) is not None


def run_matrix(out: Path, datapath: str = "nfqueue", middlebox: str | None = None,
               only: Callable[[dict[str, Any]], bool] | None = None) -> pd.DataFrame:
    """The quick matrix, or only the cells of one ``middlebox`` spec (and of ``only``)."""
    from experiments.runner import RunContext, run_experiment
    from testbed.net.shaping import choose_backend

    def wanted(point: dict[str, Any]) -> bool:
        return ((middlebox is None or point["middlebox"] == middlebox)
                and (only is None or only(point)))

    ctx = RunContext(out / "fallback", "quick", None, 1, choose_backend("auto"), datapath)
    run_experiment("fallback", ctx, {"profile": "quick", "seed": 1}, only=wanted)
    return pd.read_csv(ctx.run_dir / "fallback_matrix.csv")


def point_failures(out: Path) -> list[str]:
    """Why each point of the runs under ``out`` failed (the runner's failed.jsonl): such a
    point has no cell, so the comparison shows it only as missing."""
    lines = []
    for path in sorted(out.glob("**/failed.jsonl")):
        for line in path.read_text().splitlines():
            failure = json.loads(line)
            point = " ".join(f"{k}={v}" for k, v in failure["point"].items())
            lines.append(f"{point} failed: {failure['reason']}")
    return lines


def moved_cells(expected: pd.DataFrame, measured: pd.DataFrame) -> list[str]:
    """Readable lines for every cell whose outcome differs, or that appeared or vanished."""
    merged = expected[KEY + ["outcome"]].merge(
        measured[KEY + ["outcome"]], on=KEY, how="outer", suffixes=("_expected", "_measured"))
    lines = []
    for row in merged.itertuples():
        box = str(row.middlebox)
        if _family(row.outcome_expected, box) != _family(row.outcome_measured, box):
            lines.append(f"{row.proto:10} {row.policy:14} {row.middlebox:24} "
                         f"expected {row.outcome_expected!s:18} got {row.outcome_measured}")
    return lines


# The matrix holds on both ENO datapaths (the boxes act on the path, the datapath on the
# hosts); a cell that legitimately differs would make the table gain a datapath column.
# On bpf only the cells the datapath carries run (datapath_free: the rest repeat nfqueue's).
@pytest.mark.parametrize("middlebox", longest_first(quick_boxes()))
@pytest.mark.parametrize("datapath", ["nfqueue", "bpf"])
def test_middlebox_matrix_matches_committed_table(tmp_path: Path, datapath: str,
                                                  middlebox: str) -> None:
    if datapath == "bpf" and support_problem() is not None:
        pytest.skip(f"no bpf datapath here: {support_problem()}")
    only = None if datapath == "nfqueue" else lambda p: not datapath_free(p)
    measured = run_matrix(tmp_path, datapath, middlebox, only)
    assert set(measured["middlebox"]) == {middlebox}
    expected = pd.read_csv(EXPECTED)
    expected = expected[expected["middlebox"] == middlebox]
    if only is not None:
        expected = expected[[only({"proto": proto}) for proto in expected["proto"]]]
    moved = moved_cells(expected, measured)
    assert not moved, "middlebox outcomes moved:\n" + "\n".join(moved + point_failures(tmp_path))
    steady = measured[~measured["middlebox"].str.startswith(RANDOM_DAMAGE)]
    assert steady["consistent"].all(), steady[steady["consistent"] == 0].to_string()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--update", action="store_true", help="rewrite the committed table")
    parser.add_argument("--out", default="/tmp/tcpinc-matrix")
    parser.add_argument("--eno-datapath", default="nfqueue", choices=["nfqueue", "bpf"])
    args = parser.parse_args()
    measured = run_matrix(Path(args.out), args.eno_datapath)
    if args.update:
        measured[KEY + ["outcome"]].to_csv(EXPECTED, index=False)
        print(f"written {EXPECTED}")
    else:
        print("\n".join(moved_cells(pd.read_csv(EXPECTED), measured)) or "no change")
    return 0


if __name__ == "__main__":
    sys.exit(main())
