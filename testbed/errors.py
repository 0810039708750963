"""Errors of the emulation side, each with the fix a user should apply.

The CLI turns every ``TestbedError`` into one line on stderr and exit code 2;
library code never calls ``sys.exit``.
"""

from __future__ import annotations

from typing import TypeVar

_T = TypeVar("_T")


class TestbedError(Exception):
    """Base of the testbed's own errors; ``fix`` says what the user can do."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix

    def one_line(self) -> str:
        text = str(self).replace("\n", " ").strip()
        return f"{text} (fix: {self.fix})" if self.fix else text


class ConfigError(TestbedError):
    """A bad parameter, name or value given by the user."""


class CommandError(TestbedError):
    """An external command (ip, tc, iptables, sysctl...) failed."""

    def __init__(self, argv: list[str], returncode: int, stderr: str, where: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        place = f" in {where}" if where else ""
        super().__init__(
            f"command failed{place} (exit {returncode}): {' '.join(argv)}: {self.stderr}"
        )


class KernelFeatureError(TestbedError):
    """The kernel or the machine lacks something a run needs."""


class ProcessDiedError(TestbedError):
    """A helper process (delay line, middlebox, hook, app) exited during a run."""


class InvariantError(TestbedError):
    """The code broke one of its own invariants (a bug, not bad input). Raised where an
    ``assert`` would vanish under ``python -O``."""


def present(value: _T | None, what: str) -> _T:
    """``value``; InvariantError naming ``what`` if it is None."""
    if value is None:
        raise InvariantError(f"{what} is missing")
    return value
