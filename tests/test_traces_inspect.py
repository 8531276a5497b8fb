"""inspect: each figure against an independent numpy computation on the real traces."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TRACES
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfleet.cli.main import cli
from tokenfleet.traces.convert import convert_trace
from tokenfleet.traces.inspect import LruPrefixCache, inspect_trace, token_stats


@pytest.fixture(scope="module")
def azure_code(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "code.parquet"
    convert_trace(TRACES / "AzureLLMInferenceTrace_code.csv", path)
    return path


def test_figures_match_numpy_on_the_azure_code_trace(azure_code):
    table = pq.read_table(azure_code)
    arrival = table.column("arrival_s").to_numpy()
    summary = inspect_trace(azure_code)
    gaps = np.diff(arrival)
    assert summary["interarrival_cv"] == pytest.approx(gaps.std(ddof=1) / gaps.mean(), rel=1e-9)
    per_minute = np.bincount((arrival // 60).astype(int))
    assert summary["peak_minute_rate_rps"] == per_minute.max() / 60
    for column in ("prompt_tokens", "output_tokens"):
        values = table.column(column).to_numpy()
        got = summary[column]
        assert got["mean"] == pytest.approx(values.mean())
        assert [got["p50"], got["p90"], got["p99"]] == pytest.approx(
            np.quantile(values, [0.5, 0.9, 0.99])
        )
        assert got["max"] == values.max() and got["total"] == values.sum()
    assert summary["tiers"] == {"standard": 8_819}  # no tier column: all default tier
    assert summary["tenants"] == {}
    assert summary["prefix_blocks"] is None and summary["prefix_reuse_share"] is None


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 5_000), min_size=1, max_size=300))
def test_token_quantiles_from_counts_equal_numpy(values):
    frame = pl.DataFrame({"value": values}).group_by("value").agg(pl.len().alias("n"))
    stats = token_stats(frame)
    assert [stats["p50"], stats["p90"], stats["p99"]] == pytest.approx(
        np.quantile(values, [0.5, 0.9, 0.99]), abs=1e-9
    )
    assert stats["mean"] == pytest.approx(np.mean(values))
    assert stats["max"] == max(values) and stats["total"] == sum(values)


def test_counts_per_tier_and_tenant_with_nulls(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table({
            "arrival_s": [0.0, 30.0, 61.0, 62.0, 63.0],
            "prompt_tokens": pa.array([1, 2, 3, 4, 5], pa.int32()),
            "output_tokens": pa.array([0, 0, 1, 1, 1], pa.int32()),
            "tier": ["fast", "batch", "fast", "fast", "batch"],
            "tenant": ["a", None, "b", "b", "b"],
        }),
        path,
    )  # fmt: skip
    summary = inspect_trace(path)
    assert summary["tiers"] == {"fast": 3, "batch": 2}
    assert summary["tenants"] == {"b": 3, "": 1, "a": 1}
    assert summary["peak_minute_rate_rps"] == 3 / 60
    assert summary["mean_rate_rps"] == pytest.approx(5 / 63)


def test_single_request_has_no_rate_or_cv(tmp_path):
    path = tmp_path / "one.parquet"
    pq.write_table(pa.table({"arrival_s": [0.0], "prompt_tokens": [3], "output_tokens": [1]}), path)
    summary = inspect_trace(path)
    assert summary["rows"] == 1 and summary["span_s"] == 0.0
    assert summary["mean_rate_rps"] is None and summary["interarrival_cv"] is None


def test_json_always_has_the_prefix_keys(runner, tmp_path):
    """Null without prefix_hashes, so a JSON reader never has to test for a key."""
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"arrival_s": [0.0], "prompt_tokens": [3], "output_tokens": [1]}), path)
    result = runner.invoke(cli, ["traces", "inspect", "--json", str(path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    for key in ("prefix_block_size", "prefix_blocks", "prefix_reuse_share", "cache_tokens",
                "cache_blocks", "cache_hit_share", "cache_hit_prompt_share"):  # fmt: skip
        assert key in summary and summary[key] is None
    text = runner.invoke(cli, ["traces", "inspect", str(path)])
    assert text.exit_code == 0 and "prefix reuse" not in text.stdout


def test_prefix_hashes_without_blocks(runner, tmp_path):
    """A prefix_hashes column of empty lists: 0 blocks and no share, in JSON and in text."""
    path = tmp_path / "t.parquet"
    hashes = pa.array([[], None], pa.list_(pa.int64()))
    table = {"arrival_s": [0.0, 1.0], "prompt_tokens": [3, 4], "output_tokens": [1, 1]}
    pq.write_table(pa.table({**table, "prefix_hashes": hashes}), path)
    summary = inspect_trace(path)
    assert summary["prefix_blocks"] == 0 and summary["prefix_reuse_share"] is None
    result = runner.invoke(cli, ["traces", "inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "prefix reuse          n/a% of 0 blocks repeat an earlier block" in result.stdout


def reference_lru_hits(requests: list[list[int]], capacity: int) -> int:
    """A plain list as the LRU order (most recent last): the longest cached run from block 0
    hits, then the request's blocks are touched last block first."""
    order: list[int] = []
    hits = 0
    for blocks in requests:
        run = 0
        while run < len(blocks) and blocks[run] in order:
            run += 1
        hits += run
        for block in reversed(blocks):
            if block in order:
                order.remove(block)
            order.append(block)
            del order[: max(len(order) - capacity, 0)]
    return hits


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 12), max_size=6), min_size=1, max_size=40),
    st.integers(0, 15),
)
def test_lru_prefix_cache_matches_a_plain_reference(requests, capacity):
    cache = LruPrefixCache(capacity)
    got = sum(cache.request(blocks) for blocks in requests)
    assert got == reference_lru_hits(requests, capacity)
    assert len(cache.blocks) <= capacity


@pytest.fixture(scope="module")
def mooncake(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "mooncake.parquet"
    convert_trace(TRACES / "mooncake_synthetic_trace.jsonl", path)
    return path


def test_lru_reuse_on_mooncake_falls_with_the_cache_and_reaches_the_unbounded_share(mooncake):
    unbounded = inspect_trace(mooncake)
    assert unbounded["prefix_reuse_share"] == pytest.approx(0.6396, abs=1e-4)  # the 64%
    assert unbounded["cache_tokens"] is None and unbounded["cache_hit_share"] is None
    distinct = round(unbounded["prefix_blocks"] * (1 - unbounded["prefix_reuse_share"]))
    shares = []
    for tokens in (100_000, 1_000_000, 10_000_000, distinct * 512, 10**9):
        summary = inspect_trace(mooncake, cache_tokens=tokens)
        assert summary["cache_blocks"] == tokens // 512
        shares.append(summary["cache_hit_share"])
    assert shares == sorted(shares)
    assert shares[0] < 0.05 < shares[2] < unbounded["prefix_reuse_share"]
    assert shares[-2] == shares[-1] == pytest.approx(unbounded["prefix_reuse_share"], abs=1e-12)


def test_cache_tokens_in_text_and_json(runner, mooncake):
    result = runner.invoke(cli, ["traces", "inspect", str(mooncake), "--cache-tokens", "1000000"])
    assert result.exit_code == 0, result.output
    assert "LRU cache reuse       14.2% of blocks" in result.stdout
    plain = runner.invoke(cli, ["traces", "inspect", str(mooncake), "--json"])
    assert plain.exit_code == 0 and json.loads(plain.stdout)["cache_hit_prompt_share"] is None
