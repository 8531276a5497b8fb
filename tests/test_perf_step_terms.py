"""The engine's per-step terms beyond the hardware: the all-reduce's cost per TP peer and the
sampler's top-p/top-k filter, with the model's generation config deciding whether it runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tokenfleet.errors import UserError
from tokenfleet.hardware.profile import load_engine, load_profile
from tokenfleet.models import get_model
from tokenfleet.perf.steptime import StepTime
from tokenfleet.replay.fleet import with_sampling
from tokenfleet.replay.scenario import scenario_from_dict, validate

H100 = load_profile("h100-sxm")
BASE = load_engine("vllm-v1")
ZERO = dataclasses.replace(
    BASE, allreduce_peer_us=0.0, sampler_filter_ms=0.0, sampler_filter_ns_per_logit=0.0
)


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_each_all_reduce_costs_its_peers(tp: int) -> None:
    """2 all-reduces a layer, each `allreduce_peer_us` slower per rank beyond the first."""
    model = get_model("llama-3.1-70b")
    with_peers = dataclasses.replace(ZERO, allreduce_peer_us=5.0)
    slow = StepTime(model, H100, tp=tp, engine=with_peers).step_s(0, 0.0, 16, 16 * 1000)
    fast = StepTime(model, H100, tp=tp, engine=ZERO).step_s(0, 0.0, 16, 16 * 1000)
    assert slow - fast == pytest.approx(2 * model.n_layers * (tp - 1) * 5e-6, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("seqs", [1, 7, 64])
def test_the_sampling_filter_costs_only_where_the_model_filters(seqs: int) -> None:
    engine = dataclasses.replace(ZERO, sampler_filter_ms=0.4, sampler_filter_ns_per_logit=0.2)
    qwen = get_model("qwen2.5-7b")  # generation_config: top_p 0.8, top_k 20
    assert qwen.filtered_sampling
    plain = dataclasses.replace(qwen, filtered_sampling=False)
    with_filter = StepTime(qwen, H100, engine=engine).step_s(0, 0.0, seqs, seqs * 500)
    without = StepTime(qwen, H100, engine=ZERO).step_s(0, 0.0, seqs, seqs * 500)
    assert with_filter - without == pytest.approx(0.4e-3 + seqs * 0.2e-9 * qwen.vocab_size)
    # a model (or scenario) whose requests do not filter pays nothing for it
    assert StepTime(plain, H100, engine=engine).step_s(0, 0.0, seqs, seqs * 500) == without
    # the array form prices it the same, and decode_terms names it
    steps = StepTime(qwen, H100, engine=engine)
    assert steps.step_s_array(0, 0.0, seqs, seqs * 500)[()] == with_filter
    terms = steps.decode_terms(seqs, seqs * 500)
    assert terms["sampler_filter"] == pytest.approx(0.4e-3 + seqs * 0.2e-9 * qwen.vocab_size)
    assert sum(terms.values()) == pytest.approx(with_filter)


def test_the_generation_config_beside_a_config_json_sets_the_filter(tmp_path: Path) -> None:
    config = {
        "model_type": "llama",
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "intermediate_size": 11008,
        "vocab_size": 32000,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert not get_model(str(tmp_path)).filtered_sampling  # no generation config: plain
    generation = tmp_path / "generation_config.json"
    for doc, filtered in (
        ({"temperature": 0.6, "top_p": 0.9}, True),
        ({"top_k": 20}, True),
        ({"temperature": 0.7, "top_p": 1.0}, False),
        ({"top_k": -1}, False),  # vLLM's "no top-k"
        ({"bos_token_id": 1}, False),
    ):
        generation.write_text(json.dumps(doc))
        assert get_model(str(tmp_path)).filtered_sampling is filtered, doc
    generation.write_text(json.dumps({"top_p": "high"}))
    with pytest.raises(UserError, match="generation_config.json: key 'top_p' must be a number"):
        get_model(str(tmp_path))


def test_a_scenario_sets_the_sampling_or_keeps_the_models() -> None:
    qwen = get_model("qwen2.5-7b")
    assert with_sampling(qwen, "auto") is qwen
    assert not with_sampling(qwen, "plain").filtered_sampling
    assert with_sampling(get_model("yi-34b"), "filtered").filtered_sampling
    scenario = scenario_from_dict({"model": {"name": "qwen2.5-7b", "sampling": "greedy"}}, "s")
    with pytest.raises(UserError, match=r"\[model\] sampling = 'greedy'; use one of auto"):
        validate(scenario)


@pytest.mark.parametrize("key", ["allreduce_peer_us", "sampler_filter_ms"])
def test_a_negative_step_term_is_refused_naming_the_key(tmp_path: Path, key: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "mine"\nstep_overhead_ms = 0.8\nseq_overhead_us = 8.0\nlayer_launch_us = 40.0\n'
        "cuda_graphs = true\nlayer_graph_us = 4.0\nallreduce_overhead_us = 0.0\n"
        f"act_passes = 10.0\n{key} = -1.0\n"
    )
    with pytest.raises(UserError, match=f"key '{key}' must be >= 0"):
        load_engine(str(bad))
