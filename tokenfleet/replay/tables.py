"""Config dataclasses from TOML tables, by the types of the fields' defaults: unknown keys and
wrong types are refused with their place in the file."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from tokenfleet.errors import UserError
from tokenfleet.replay.plugins import PolicyConfig


def build_config(cls: type, table: dict[str, Any], where: str):
    """A config dataclass from its table, recursively, by the types of the fields' defaults:
    a PolicyConfig is a plugin table, a dataclass a sub-table, metadata["item"] marks an array
    of tables, metadata["accepts"] the types a scalar may take. A new section is a new field."""
    _check_keys(table, cls, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        f = fields[key]
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if default is dataclasses.MISSING:  # a required name, e.g. a tier's
            default = ""
        here = f"{where}: {key}"
        if isinstance(default, PolicyConfig):
            values[key] = _policy(value, here)
        elif "item" in f.metadata:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise UserError(f"{here} must be an array of tables: [[{key}]]")
            item = f.metadata["item"]
            values[key] = tuple(
                build_config(item, v, f"{where}: {key}[{i}]") for i, v in enumerate(value)
            )
        elif isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UserError(f'{here} should be a list of names, like ["a", "b"]')
            values[key] = tuple(value)
        elif dataclasses.is_dataclass(default):
            values[key] = build_config(type(default), _expect_table(value, here), here)
        else:
            values[key] = _scalar(f, default, value, where)
    if "name" in fields and fields["name"].default is dataclasses.MISSING:
        values.setdefault("name", "")
        if not values["name"]:
            raise UserError(f'{where}: needs a name, e.g. name = "standard"')
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


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _scalar(f: dataclasses.Field, default: Any, value: Any, where: str) -> Any:
    declared = f.metadata.get("accepts", (type(default),))
    example = f.metadata.get("example", default)
    accepts = (*declared, int) if float in declared else declared
    if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, accepts):
        kinds = " or ".join(TYPE_NAMES.get(t, t.__name__) for t in declared)
        raise UserError(f"{where}: {f.name} = {value!r} should be {kinds} like {example!r}")
    if isinstance(value, float) and math.isnan(value):  # NaN is the "unset" of some defaults
        raise UserError(f"{where}: {f.name} = nan should be a number like {example!r}")
    return float(value) if isinstance(default, float) else value
