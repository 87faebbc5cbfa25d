"""Fixtures of the shared-store tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def without_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stores opened by the test acknowledge only after a look (``lease_ms=0``, through the
    environment): for tests of the acknowledgement gate itself, where an append the old owner
    makes durable after a hand-over must wait for the look that fences it (with the default
    lease it would be acknowledged, and land before the new owner's records)."""
    monkeypatch.setenv("STREAMLIB_LEASE_MS", "0")
