"""Shared test helpers."""

from __future__ import annotations


def assert_within(measured: float, expected: float, tol: float, rel: float = 0.0,
                  what: str = "value") -> None:
    """Assert |measured - expected| <= tol + rel * |expected| (absolute plus relative part)."""
    bound = tol + rel * abs(expected)
    assert abs(measured - expected) <= bound, (
        f"{what}: measured {measured:.4f}, expected {expected:.4f} +- {bound:.4f}"
    )
