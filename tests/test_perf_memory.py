"""Memory planning: weights per GPU, KV capacity, and the one-line refusal."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenfleet.errors import UserError
from tokenfleet.hardware.profile import load_profile
from tokenfleet.models import get_model
from tokenfleet.perf.memory import plan_memory


def test_the_plan_adds_up() -> None:
    spec, gpu = get_model("llama-3.1-70b"), load_profile("h100-sxm")
    plan = plan_memory(spec, gpu, tp=4)
    assert plan.weights_per_gpu_bytes == spec.weight_bytes("bf16") / 4
    used = plan.weights_per_gpu_bytes + plan.reserve_per_gpu_bytes + plan.kv_per_gpu_bytes
    assert used == pytest.approx(0.9 * gpu.hbm_bytes)
    assert plan.kv_capacity_tokens == plan.kv_blocks * plan.block_size
    assert plan.kv_capacity_tokens * plan.kv_bytes_per_token_per_gpu <= plan.kv_per_gpu_bytes
    # 8 KV heads split over 4 GPUs: each holds a quarter of every token's KV.
    assert plan.kv_bytes_per_token_per_gpu == spec.kv_bytes_per_token("bf16") / 4


def test_the_rope_table_is_reserved_on_every_gpu() -> None:
    """vLLM keeps one cos/sin row per position up to max_position_embeddings, head_dim wide,
    in bf16, on each GPU: Llama 4 Scout's 10,485,760 positions take 2.7 GB of each GPU's KV
    room, whatever the tensor parallelism; a model without a known length reserves none."""
    spec, gpu = get_model("llama-4-scout"), load_profile("h100-sxm")
    table = 10_485_760 * 128 * 2
    unknown = dataclasses.replace(spec, max_position_embeddings=0)
    for tp in (2, 4):
        plan = plan_memory(spec, gpu, tp, dtype="fp8")
        without = plan_memory(unknown, gpu, tp, dtype="fp8")
        assert without.kv_per_gpu_bytes - plan.kv_per_gpu_bytes == pytest.approx(table)
        assert plan.reserve_per_gpu_bytes - without.reserve_per_gpu_bytes == pytest.approx(table)


def test_fp8_kv_and_more_gpus_hold_more_tokens() -> None:
    spec, gpu = get_model("llama-3.1-70b"), load_profile("h200")
    base = plan_memory(spec, gpu, tp=2)
    assert plan_memory(spec, gpu, tp=2, kv_dtype="fp8").kv_capacity_tokens >= (
        2 * base.kv_capacity_tokens - 16
    )
    assert plan_memory(spec, gpu, tp=4).kv_capacity_tokens > 2 * base.kv_capacity_tokens
    assert plan_memory(spec, gpu, tp=2, dtype="fp8").kv_capacity_tokens > base.kv_capacity_tokens


def test_mla_latent_is_replicated_and_kv_heads_stop_splitting_at_one_per_gpu() -> None:
    gpu = load_profile("h200")
    mla = get_model("deepseek-v3")
    assert plan_memory(mla, gpu, tp=8, dtype="fp8").kv_bytes_per_token_per_gpu == (
        mla.kv_bytes_per_token("bf16")
    )
    gqa = get_model("llama-3.1-405b")  # 8 KV heads on 16 GPUs: each GPU keeps one head
    plan = plan_memory(gqa, gpu, tp=16)
    assert plan.kv_bytes_per_token_per_gpu == gqa.kv_bytes_per_token("bf16") / 8


@given(st.floats(0.5, 0.95), st.floats(0.01, 0.04))
def test_capacity_grows_with_the_memory_fraction(fraction: float, more: float) -> None:
    spec, gpu = get_model("llama-3.1-8b"), load_profile("l40s")
    low = plan_memory(spec, gpu, 1, gpu_memory_utilization=fraction)
    high = plan_memory(spec, gpu, 1, gpu_memory_utilization=fraction + more)
    assert high.kv_capacity_tokens >= low.kv_capacity_tokens


def test_a_model_that_does_not_fit_is_refused_in_one_line() -> None:
    with pytest.raises(UserError) as err:
        plan_memory(get_model("llama-3.1-405b"), load_profile("h100-sxm"), tp=8)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("llama-3.1-405b in bf16 needs 756 GiB of weights; 8 x h100-sxm")
    assert "use tp 16, fp8 weights" in message
    # ... and the suggestions work.
    plan_memory(get_model("llama-3.1-405b"), load_profile("h100-sxm"), tp=16)
    plan_memory(get_model("llama-3.1-405b"), load_profile("h100-sxm"), tp=8, dtype="fp8")


def test_weights_that_fit_but_leave_no_kv_room_are_refused() -> None:
    with pytest.raises(UserError, match="KV cache; 2 x a100-80gb hold 160 GiB, 127 GiB usable"):
        plan_memory(
            get_model("llama-2-70b"), load_profile("a100-80gb"), tp=2, gpu_memory_utilization=0.82
        )


@pytest.mark.parametrize(("value", "name"), [(0.0, "gpu_memory_utilization"), (1.5, "gpu_memory")])
def test_bad_settings_are_refused(value: float, name: str) -> None:
    with pytest.raises(UserError, match=name):
        plan_memory(
            get_model("llama-3.1-8b"), load_profile("a100-80gb"), 1, gpu_memory_utilization=value
        )


def test_capacity_agrees_with_what_splitwise_could_and_could_not_run(shared_data) -> None:
    """Llama-2-70B on two A100s: the measured batches of 32 x (512 + 128) tokens ran as steady
    batches; 64 x 640 (the README's anomalous rows: prefill faster than the GPUs' peak FLOPs,
    e2e 17x prompt + decode) must exceed the cache, while 32 x 640 must fit."""
    rows = pl.read_csv(shared_data / "measured" / "splitwise_a100_llama2_bloom.csv").filter(
        (pl.col("model") == "llama2-70b")
        & (pl.col("tensor_parallel") == 2)
        & (pl.col("prompt_size") == 512)
        & (pl.col("token_size") == 128)
    )
    plan = plan_memory(get_model("llama-2-70b"), load_profile("a100-80gb"), 2, dtype="fp16")
    for batch in rows["batch_size"].unique().to_list():
        fits = batch * (512 + 128) <= plan.kv_capacity_tokens
        assert fits == (batch < 64), batch
    # The physics that marks the 64-batch prefill as impossible: 32,768 tokens in 0.79 s.
    fast = rows.filter(pl.col("batch_size") == 64)["prompt_time"].median() / 1e3
    flops = get_model("llama-2-70b").flops_per_token_dense * 64 * 512
    assert flops / fast > 2 * 312e12  # more than the two GPUs' combined peak
