"""Shared fixtures: the real data in ../shared/data, and a CLI runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
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


@pytest.fixture(scope="session")
def conv_lengths(shared_data) -> tuple[np.ndarray, np.ndarray]:
    """The first 2,000 Azure 2023 conversation requests short enough for small caches."""
    table = pcsv.read_csv(TRACES / "AzureLLMInferenceTrace_conv.csv")
    prompts = table.column("ContextTokens").to_numpy().astype(np.int32)
    outputs = table.column("GeneratedTokens").to_numpy().astype(np.int32)
    keep = prompts + outputs < 4000  # short enough for the small caches used below
    return prompts[keep][:2000], outputs[keep][:2000]
