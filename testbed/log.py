"""Logging set-up shared by the library and the CLI."""

from __future__ import annotations

import logging

LOG = logging.getLogger("tcpinc")


def setup(verbose: int = 0) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    LOG.setLevel(level)
