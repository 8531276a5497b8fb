"""Scenario files: defaults, unknown keys by name, types, overrides, and the shipped examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenfleet.errors import UserError
from tokenfleet.replay.batcher import batcher_class
from tokenfleet.replay.scenario import (
    AUTO,
    load_scenario,
    scenario_from_dict,
    scenario_to_dict,
    validate,
    with_overrides,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_no_scenario_means_the_documented_default():
    s = load_scenario(None)
    assert s.model.name == "llama-3.1-8b"
    (pool,) = s.pools
    assert (pool.gpu, pool.tp, pool.replicas, pool.batcher.policy) == ("h100-sxm", 1, AUTO, "vllm")
    assert s.balancer.policy == "least-requests"


def test_the_default_example_is_the_default():
    def effective(s):
        (pool,) = s.pools
        cls = batcher_class(pool.batcher.policy)
        return (
            s.seed,
            s.interval_s,
            s.model,
            s.balancer,
            pool.gpu,
            pool.tp,
            pool.replicas,
            pool.engine,
            pool.gpu_memory_utilization,
            pool.block_size,
            cls.Settings(**pool.batcher.settings),
        )

    example = load_scenario(EXAMPLES / "replay-default.toml")
    assert effective(example) == effective(load_scenario(None))
    assert scenario_from_dict(scenario_to_dict(example)) == example  # round trip


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_loads(path):
    scenario = load_scenario(path)
    assert scenario.pools
    assert scenario_from_dict(scenario_to_dict(scenario)) == scenario  # round trip


def test_economics_sections_default_and_read_back():
    s = load_scenario(None)
    assert [t.name for t in s.tiers] == ["standard"]
    assert (s.gateway.unknown_tier, s.gateway.latency_s, s.gateway.limits) == ("default", 0.0, ())
    (pool,) = s.pools
    assert (pool.pricing.kind, pool.autoscale.enabled) == ("rented", False)
    doc = {
        "pools": [{"name": "a"}, {"name": "b", "pricing": {"kind": "owned", "pue": 1.4}}],
        "tiers": [{"name": "standard"}, {"name": "fast", "pools": ["b"], "priority": 3}],
        "gateway": {"limits": [{"tier": "fast", "requests_per_minute": 600.0}]},
    }
    t = validate(scenario_from_dict(doc))
    assert t.tiers[1].pools == ("b",) and t.tiers[1].priority == 3
    assert t.pools[1].pricing.for_gpu(2.0, 700.0).build("b").pue == 1.4
    assert scenario_from_dict(scenario_to_dict(t)) == t


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"sead": 1}, "unknown key 'sead'"),
        ({"model": {"nmae": "x"}}, "unknown key 'nmae'"),
        ({"pools": [{"gpus": "x"}]}, "unknown key 'gpus'"),
        ({"pools": [{"batcher": {"policy": "vllm", "max_seqs": 4}}]}, "unknown setting 'max_seqs'"),
        ({"balancer": {"policy": "session", "load": 2.0}}, "unknown setting 'load'"),
        ({"pools": [{"tp": "2"}]}, "tp = '2' should be an integer"),
        ({"pools": [{"replicas": "many"}]}, "replicas = 'many'"),
        ({"pools": [{"batcher": {"max_num_seqs": 4}}]}, "needs a policy"),
        ({"pools": [{"batcher": {"policy": "fifo"}}]}, "unknown batcher 'fifo'"),
        ({"pools": [{"name": "a"}, {"name": "a"}]}, "used twice"),
        ({"interval_s": 0}, "interval_s"),
        ({"pools": [{"batcher": {"policy": "vllm", "scheduling_policy": "lifo"}}]}, "lifo"),
        ({"gateway": {"retries": {"max_retry": 2}}}, "unknown key 'max_retry'"),
        ({"pools": [{"pricing": {"usd_per_gpu_hr": 2.0}}]}, "unknown key 'usd_per_gpu_hr'"),
        ({"pools": [{"autoscale": {"enable": True}}]}, "unknown key 'enable'"),
        ({"tiers": [{"name": "x", "price": 1.0}]}, "unknown key 'price'"),
        ({"tiers": [{"usd_per_mtoken_input": 1.0}]}, "needs a name"),
        ({"tiers": [{"name": "a"}, {"name": "a"}]}, "tier name 'a' is used twice"),
        ({"tiers": [{"name": "fast"}]}, "default_tier = 'standard' is not a tier"),
        ({"gateway": {"unknown_tier": "drop"}}, "unknown_tier = 'drop'"),
        ({"gateway": {"latency_s": -1.0}}, "latency_s = -1.0"),
        ({"gateway": {"limits": [{"requests_per_minute": 5.0}]}}, "exactly one of tenant"),
        ({"gateway": {"limits": [{"tier": "gold"}]}}, "tier 'gold' is not a tier"),
        ({"pools": [{"pricing": {"kind": "owned", "pue": 0.8}}]}, "pue = 0.8"),
        (
            {"pools": [{"replicas": 9, "autoscale": {"enabled": True, "max_replicas": 4}}]},
            "outside autoscale",
        ),
        ({"pools": [{"autoscale": {"enabled": True, "metric": "gpu"}}]}, "metric = 'gpu'"),
    ],
)
def test_mistakes_are_refused_by_name(doc, needle):
    with pytest.raises(UserError, match=needle):
        validate(scenario_from_dict(doc))


def test_a_file_that_is_not_toml_is_refused(tmp_path):
    bad = tmp_path / "s.toml"
    bad.write_text("[pools\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_scenario(bad)
    with pytest.raises(UserError, match="file not found"):
        load_scenario(tmp_path / "missing.toml")


def test_flags_override_every_pool_and_a_new_batcher_drops_the_old_settings():
    s = scenario_from_dict(
        {
            "pools": [
                {"name": "a", "batcher": {"policy": "vllm", "max_num_batched_tokens": 2048}},
                {"name": "b", "replicas": 2},
            ]
        }
    )
    t = with_overrides(s, gpu="a100-80gb", replicas=3, max_num_seqs=64, seed=5, model="m")
    assert [p.gpu for p in t.pools] == ["a100-80gb"] * 2
    assert [p.replicas for p in t.pools] == [3, 3]
    assert t.pools[0].batcher.settings == {"max_num_batched_tokens": 2048, "max_num_seqs": 64}
    assert (t.seed, t.model.name) == (5, "m")
    u = with_overrides(s, batcher="orca")
    assert u.pools[0].batcher.settings == {}
    with pytest.raises(UserError, match="max_num_batched_tokens does not apply"):
        with_overrides(s, batcher="static", max_num_batched_tokens=100)
