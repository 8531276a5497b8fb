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


@pytest.fixture(scope="session")
def azure_slice(tmp_path_factory, shared_data) -> Path:
    """The first 2,000 Azure 2023 conversation requests as a canonical Parquet trace."""
    from tokenfleet.traces.convert import convert_trace

    path = tmp_path_factory.mktemp("traces") / "conv-slice.parquet"
    convert_trace(TRACES / "AzureLLMInferenceTrace_conv.csv", path, limit=2000)
    return path


@pytest.fixture(scope="session")
def mooncake_rows(tmp_path_factory, shared_data) -> list[tuple]:
    """The Mooncake synthetic trace as run_rows rows (arrival, prompt, output, no session,
    standard tier, no tenant, prefix hashes), converted once for every test module."""
    from tokenfleet.traces.convert import convert_trace
    from tokenfleet.traces.reader import read_trace_batches

    path = tmp_path_factory.mktemp("mooncake") / "mooncake.parquet"
    convert_trace(TRACES / "mooncake_synthetic_trace.jsonl", path)
    rows = []
    columns = ["arrival_s", "prompt_tokens", "output_tokens", "prefix_hashes"]
    for batch in read_trace_batches(path, columns=columns):
        for t, p, o, h in zip(*(batch.column(c).to_pylist() for c in columns), strict=True):
            rows.append((t, p, o, None, "standard", None, h))
    return rows
