"""Shared fixtures: the real data in ../shared/data, and a CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRACES = SHARED_DATA / "traces"
MEASURED = SHARED_DATA / "measured"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}; put ../shared beside the checkout")
    return SHARED_DATA


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()
