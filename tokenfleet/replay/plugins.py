"""Plugins: batchers and balancers found by name, and their settings from a scenario table.

A scenario names its batcher (`[pools.batcher] policy = "..."`) and balancer
(`[balancer] policy = "..."`). A name is looked up first among the built-ins, then in an
entry-point group, so another package adds a policy without forking tokenfleet:

- batchers: group `tokenfleet.batchers` (the interface is in `tokenfleet.replay.batcher`);
- balancers: group `tokenfleet.balancers` (the interface is in `tokenfleet.replay.balancer`).

A third-party package declares them in its own pyproject.toml::

    [project.entry-points."tokenfleet.batchers"]
    my-batcher = "my_package.batching:MyBatcher"

    [project.entry-points."tokenfleet.balancers"]
    my-balancer = "my_package.routing:MyBalancer"

and, once installed in the same environment, `policy = "my-batcher"` selects it. A built-in
name cannot be replaced this way: built-ins are looked up first. The class's `Settings`
dataclass lists its scenario keys; `build_settings` refuses unknown keys and wrong types for
plugins and built-ins alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from tokenfleet.errors import UserError


@dataclass(frozen=True)
class PolicyConfig:
    """A plugin choice: its registered name and its settings table."""

    policy: str
    settings: dict[str, Any] = field(default_factory=dict)


def find_plugin(name: str, builtins: dict[str, type], group: str, kind: str) -> type:
    """The class registered as `name`: a built-in, else an entry point of `group`.

    An unknown name is a UserError listing every known one (`kind` names what was looked for,
    e.g. "batcher")."""
    if name in builtins:
        return builtins[name]
    plugins = {ep.name: ep for ep in entry_points(group=group)}
    if name in plugins:
        return plugins[name].load()
    known = ", ".join(sorted(set(builtins) | set(plugins)))
    raise UserError(f"unknown {kind} {name!r}; known: {known}")


def build_settings(settings_cls: type, values: dict[str, Any], where: str):
    """A plugin's settings dataclass from a table; an unknown key or a wrong type is refused."""
    fields = {f.name: f for f in dataclasses.fields(settings_cls)}
    for key, value in values.items():
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise UserError(f"{where}: unknown setting {key!r} (known: {known})")
        default = fields[key].default
        if default is not dataclasses.MISSING and not _same_kind(default, value):
            like = str(default).lower() if isinstance(default, bool) else repr(default)
            raise UserError(
                f"{where}: {key} = {value!r} should be a {type(default).__name__} like {like}"
            )
    return settings_cls(**values)


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))
