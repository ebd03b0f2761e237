"""The chaos soak's marker (the short variant runs with the unit tests)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: the chaos soak (UFDL_SOAK_MINUTES sets its length)")
