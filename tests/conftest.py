"""Test order for a parallel run (`make test` runs pytest-xdist workers, see the Makefile).

The workers take tests in collection order, one or two at a time. The namespace tests wait on
emulated round trips and kernel timers for seconds to minutes each, the unit tests mostly take
milliseconds of CPU: so the longest come first and the short ones fill the workers at the end,
instead of one worker still running a middlebox-matrix cell long after the rest ran out of
work. Modules stay whole and keep their own order (module fixtures, readable output).
"""

from __future__ import annotations

import pytest

# Module paths (relative to tests/) by rank: lower runs earlier; the rest rank last.
FIRST = (
    "emulation/test_middlebox_matrix.py",  # one fallback run per middlebox model and datapath
    "emulation/",
    "unit/test_executors.py",  # local Dask clusters: half a minute per test
)


def _rank(item: pytest.Item) -> int:
    path = item.path.as_posix()
    for rank, prefix in enumerate(FIRST):
        if f"/tests/{prefix}" in path:
            return rank
    return len(FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: collection order within each rank
