"""Checks of command-line values that name places to write, made before anything is built.

A bad output path found after the network is up (or after a run directory was made) leaves
half-made results behind and ends in a traceback; these checks turn it into one line naming
the flag and the fix, and they leave nothing on disk.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError


def check_writable_dir(path: Path, flag: str) -> None:
    """``path`` is a directory we can write in, or one we can create (nothing is created)."""
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is not a directory",
                          f"give {flag} a directory path")
    try:
        # A real write test: access(2) says yes to root on paths that still refuse files
        # (/proc, read-only mounts). The temporary file is gone when the block ends.
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write in {existing} ({exc.strerror})",
                          f"give {flag} a writable directory") from None


def check_name(value: str, flag: str) -> None:
    """A single path component (no separators, not . or ..): it must stay inside its parent."""
    if not value or value in (".", "..") or "/" in value or "\0" in value:
        raise ConfigError(f"{flag} {value!r} is not a plain name",
                          f"give {flag} a name without '/' (it is made inside --out)")


def read_run_metadata(run_dir: Path, what: str) -> dict[str, Any]:
    """metadata.json of a run directory written by `tcpinc run`, or a ConfigError."""
    meta_path = run_dir / "metadata.json"
    if not run_dir.is_dir():
        raise ConfigError(f"{what} {run_dir}: no such directory",
                          "give a run directory written by `tcpinc run`")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {run_dir} is not a run directory (metadata.json: {exc})",
                          "give a run directory written by `tcpinc run`") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("experiment"), str) \
            or not isinstance(meta.get("arguments"), dict):
        raise ConfigError(f"{what} {run_dir}: metadata.json names no experiment and arguments",
                          "give a run directory written by `tcpinc run`")
    return meta
