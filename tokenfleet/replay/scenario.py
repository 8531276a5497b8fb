"""Scenario: what is simulated. A TOML file read with tomllib into frozen dataclasses.

Every setting has a default, so an empty file (or none) is a valid scenario: Llama-3.1-8B on
H100-SXM behind a least-requests balancer, vLLM batching, a fleet sized to the trace's rate. An
unknown key is refused with its name; CLI flags override the common settings.

Layout (every key optional)::

    seed = 0
    interval_s = 10.0            # timeline interval
    [model]                      # name = "llama-3.1-8b" | path to TOML / HF config.json
    [balancer]                   # policy = "least-requests", plus the policy's settings
    [[pools]]                    # one table per pool of identical replicas
    [pools.batcher]              # policy = "vllm", plus the policy's settings

A policy's settings are checked against the policy's own Settings dataclass, so plugins get the
same unknown-key errors as built-ins. New sections are added as dataclass fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenfleet.errors import UserError
from tokenfleet.replay.balancer import balancer_class
from tokenfleet.replay.batcher import batcher_class, build_settings
from tokenfleet.tomlfile import read_toml

AUTO = "auto"


@dataclass(frozen=True)
class ModelConfig:
    name: str = "llama-3.1-8b"
    dtype: str = "bf16"
    kv_dtype: str = ""  # empty: same as dtype (bf16 or fp16)


@dataclass(frozen=True)
class PolicyConfig:
    """A plugin choice: its registered name and its settings table."""

    policy: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PoolConfig:
    name: str = "default"
    gpu: str = "h100-sxm"
    tp: int = 1
    replicas: int | str = field(default=AUTO, metadata={"accepts": (int, str)})  # or "auto"
    engine: str = ""  # engine preset of overheads; empty: the GPU profile's default
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    batcher: PolicyConfig = field(default_factory=lambda: PolicyConfig("vllm"))

    def __post_init__(self) -> None:
        if isinstance(self.replicas, str) and self.replicas != AUTO:
            raise UserError(f'pool {self.name!r}: replicas = {self.replicas!r}: a count or "auto"')


@dataclass(frozen=True)
class Scenario:
    seed: int = 0
    interval_s: float = 10.0
    model: ModelConfig = field(default_factory=ModelConfig)
    balancer: PolicyConfig = field(default_factory=lambda: PolicyConfig("least-requests"))
    pools: tuple[PoolConfig, ...] = field(default=(PoolConfig(),), metadata={"item": PoolConfig})

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise UserError(f"interval_s = {self.interval_s} must be > 0")
        if not self.pools:
            raise UserError("a scenario needs at least one [[pools]] table")
        names = [p.name for p in self.pools]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise UserError(f"pool name {sorted(dup)[0]!r} is used twice; give each pool its own")


def load_scenario(path: str | Path | None) -> Scenario:
    """Read a scenario file (None: the defaults), refusing unknown keys and wrong types."""
    if path is None:
        return validate(Scenario())
    return validate(scenario_from_dict(read_toml(path), str(path)))


def scenario_from_dict(doc: dict[str, Any], where: str = "scenario") -> Scenario:
    return _build(Scenario, doc, where)


def _build(cls: type, table: dict[str, Any], where: str):
    """A config dataclass from its table, recursively, by the types of the fields' defaults:
    a PolicyConfig is a plugin table, a dataclass a sub-table, metadata["item"] marks an array
    of tables, metadata["accepts"] the types a scalar may take. A new section is a new field."""
    _check_keys(table, cls, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        f = fields[key]
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        here = f"{where}: {key}"
        if isinstance(default, PolicyConfig):
            values[key] = _policy(value, here)
        elif "item" in f.metadata:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise UserError(f"{here} must be an array of tables: [[{key}]]")
            item = f.metadata["item"]
            values[key] = tuple(
                _build(item, v, f"{where}: {key}[{i}]") for i, v in enumerate(value)
            )
        elif dataclasses.is_dataclass(default):
            values[key] = _build(type(default), _expect_table(value, here), here)
        else:
            values[key] = _scalar(f, default, value, where)
    return cls(**values)


def _policy(value: Any, where: str) -> PolicyConfig:
    table = dict(_expect_table(value, where))
    policy = table.pop("policy", None)
    if policy is None:
        raise UserError(f'{where}: needs a policy, e.g. policy = "vllm"')
    if not isinstance(policy, str):
        raise UserError(f"{where}: policy = {policy!r} should be a name")
    return PolicyConfig(policy, table)


def _expect_table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{where} should be a table")
    return value


def _check_keys(table: dict[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in known:
            raise UserError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")


def _scalar(f: dataclasses.Field, default: Any, value: Any, where: str) -> Any:
    accepts = f.metadata.get("accepts", (type(default),))
    if float in accepts:
        accepts = (*accepts, int)
    if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, accepts):
        raise UserError(
            f"{where}: {f.name} = {value!r} should be a {type(default).__name__} like {default!r}"
        )
    return float(value) if isinstance(default, float) else value


def validate(scenario: Scenario) -> Scenario:
    """Check the plugin names and their settings now, before any work is done."""
    balancer_cls = balancer_class(scenario.balancer.policy)
    build_settings(
        balancer_cls.Settings, scenario.balancer.settings, f"balancer {scenario.balancer.policy!r}"
    )
    for pool in scenario.pools:
        where = f"pool {pool.name!r}"
        if pool.tp < 1:
            raise UserError(f"{where}: tp = {pool.tp} must be >= 1")
        if pool.replicas != AUTO and pool.replicas < 1:
            raise UserError(f"{where}: replicas = {pool.replicas} must be >= 1")
        cls = batcher_class(pool.batcher.policy)
        cls(build_settings(cls.Settings, pool.batcher.settings, f"{where} batcher"))
    return scenario


# CLI flag -> batcher setting it sets.
BATCHER_FLAGS = {"max_num_seqs": "--max-num-seqs", "max_num_batched_tokens": "--max-batched-tokens"}


def with_overrides(
    scenario: Scenario,
    *,
    model: str | None = None,
    gpu: str | None = None,
    tp: int | None = None,
    replicas: int | None = None,
    batcher: str | None = None,
    balancer: str | None = None,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    seed: int | None = None,
    interval_s: float | None = None,
) -> Scenario:
    """The scenario with CLI flags applied; pool-level flags apply to every pool.

    A new --batcher or --balancer drops the file's settings for the old policy (they belong to
    it); a batcher flag the chosen batcher does not have is refused.
    """
    top: dict[str, Any] = {}
    if seed is not None:
        top["seed"] = seed
    if interval_s is not None:
        top["interval_s"] = interval_s
    if model is not None:
        top["model"] = dataclasses.replace(scenario.model, name=model)
    if balancer is not None and balancer != scenario.balancer.policy:
        top["balancer"] = PolicyConfig(balancer)
    flags = {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens}
    pools = []
    for pool in scenario.pools:
        changes: dict[str, Any] = {}
        if gpu is not None:
            changes["gpu"] = gpu
        if tp is not None:
            changes["tp"] = tp
        if replicas is not None:
            changes["replicas"] = replicas
        policy = pool.batcher
        if batcher is not None and batcher != policy.policy:
            policy = PolicyConfig(batcher)
        settings = dict(policy.settings)
        known = {f.name for f in dataclasses.fields(batcher_class(policy.policy).Settings)}
        for key, value in flags.items():
            if value is None:
                continue
            if key not in known:
                raise UserError(
                    f"{BATCHER_FLAGS[key]} does not apply to the {policy.policy!r} batcher "
                    f"(its settings: {', '.join(sorted(known))})"
                )
            settings[key] = value
        changes["batcher"] = PolicyConfig(policy.policy, settings)
        pools.append(dataclasses.replace(pool, **changes))
    return validate(dataclasses.replace(scenario, pools=tuple(pools), **top))


def scenario_to_dict(scenario: Scenario) -> dict[str, Any]:
    """The scenario as a TOML-ready table (policy settings flattened back into their tables)."""

    def policy(p: PolicyConfig) -> dict[str, Any]:
        return {"policy": p.policy, **p.settings}

    return {
        "seed": scenario.seed,
        "interval_s": scenario.interval_s,
        "model": dataclasses.asdict(scenario.model),
        "balancer": policy(scenario.balancer),
        "pools": [
            {
                **{
                    f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "batcher"
                },
                "batcher": policy(p.batcher),
            }
            for p in scenario.pools
        ],
    }
