"""Plugins: a batcher and a balancer installed only as entry points are found and used."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import polars as pl
import pytest

from tokenfleet.cli.main import cli
from tokenfleet.errors import UserError
from tokenfleet.replay import plugins
from tokenfleet.replay.balancer import BUILTIN_BALANCERS, SessionAffinity, balancer_class
from tokenfleet.replay.batcher import BUILTIN_BATCHERS, VllmBatcher, batcher_class

MODULE = "tf_plugin_probe"
BATCHER = "probe-batcher"
BALANCER = "probe-first"

PLUGIN_SOURCE = '''
"""A batcher (vLLM's, with its settings) and a balancer that count their calls."""

from tokenfleet.replay.balancer import NoSettings
from tokenfleet.replay.batcher import VllmBatcher

CALLS = {"schedule": 0, "pick": 0, "max_num_seqs": None}


class ProbeBatcher(VllmBatcher):
    name = "probe-batcher"

    def schedule(self, rep, now_s):
        CALLS["schedule"] += 1
        CALLS["max_num_seqs"] = self.max_num_seqs
        return super().schedule(rep, now_s)


class FirstReplica:
    """Every request to replica 0."""

    name = "probe-first"
    Settings = NoSettings

    def __init__(self, settings, replicas, outstanding, seed):
        pass

    def pick(self, seq, now_s):
        CALLS["pick"] += 1
        return 0
'''


@pytest.fixture()
def installed(tmp_path, monkeypatch):
    """The probe module and a dist-info declaring it in both groups, on sys.path."""
    (tmp_path / f"{MODULE}.py").write_text(PLUGIN_SOURCE)
    info = tmp_path / "tf_plugin_probe-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tf-plugin-probe\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            f"""\
            [tokenfleet.batchers]
            {BATCHER} = {MODULE}:ProbeBatcher

            [tokenfleet.balancers]
            {BALANCER} = {MODULE}:FirstReplica
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    importlib.invalidate_caches()
    yield
    sys.modules.pop(MODULE, None)
    importlib.invalidate_caches()


def test_entry_point_plugins_are_found(installed):
    probe = importlib.import_module(MODULE)
    assert batcher_class(BATCHER) is probe.ProbeBatcher
    assert balancer_class(BALANCER) is probe.FirstReplica
    assert BATCHER not in BUILTIN_BATCHERS and BALANCER not in BUILTIN_BALANCERS


def test_a_replay_runs_with_entry_point_plugins(installed, tmp_path, runner):
    trace = tmp_path / "t.parquet"
    synth = ["traces", "synth", str(trace), "--requests", "40", "--rate", "20", "--seed", "1"]
    assert runner.invoke(cli, synth).exit_code == 0
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        f'[balancer]\npolicy = "{BALANCER}"\n'
        f'[[pools]]\nreplicas = 3\n[pools.batcher]\npolicy = "{BATCHER}"\nmax_num_seqs = 4\n'
    )
    out = tmp_path / "out"
    args = ["replay", str(trace), "--scenario", str(scenario), "--out", str(out), "--json", "-q"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)
    probe = sys.modules[MODULE]
    assert probe.CALLS["pick"] == 40
    assert probe.CALLS["schedule"] > 0
    assert probe.CALLS["max_num_seqs"] == 4  # the scenario's setting reached the plugin
    requests = pl.read_parquet(out / "requests.parquet")
    assert requests.height == 40
    assert requests["replica"].unique().to_list() == [0]


def test_built_ins_need_no_entry_points(monkeypatch):
    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    assert batcher_class("vllm") is VllmBatcher
    assert balancer_class("session") is SessionAffinity


def test_an_unknown_name_lists_the_known_ones(installed):
    with pytest.raises(UserError, match=f"unknown batcher 'fifo'; known: .*{BATCHER}.*vllm"):
        batcher_class("fifo")
    with pytest.raises(UserError, match=r"unknown balancer 'nearest'; known: .*least-kv"):
        balancer_class("nearest")
    known = ", ".join(sorted({*BUILTIN_BALANCERS, BALANCER}))
    with pytest.raises(UserError) as err:
        balancer_class("nearest")
    assert str(err.value) == f"unknown balancer 'nearest'; known: {known}"
