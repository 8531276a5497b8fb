"""`gpus show` says, for each engine preset, what it was fitted to and its error there."""

import json
import re
from importlib.resources import files

import pytest
from click.testing import CliRunner

from tokenfleet.cli.main import cli
from tokenfleet.errors import UserError
from tokenfleet.hardware.profile import builtin_engines, load_engine


def test_gpus_show_names_every_presets_source_and_error():
    result = CliRunner().invoke(cli, ["gpus", "show", "h100-sxm", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)["engine_presets"]
    assert set(shown) == {p.name for p in builtin_engines()}
    assert "Splitwise" in shown["vllm-v0-2023"]["fitted_to"]
    assert "fit-runs" in shown["vllm-v1"]["fitted_to"]
    assert "held out" in shown["vllm-v1"]["fit_error"]


def test_an_engine_preset_with_a_non_string_source_is_refused(tmp_path):
    text = (files("tokenfleet") / "hardware/profiles/engines/vllm-v1.toml").read_text()
    preset = tmp_path / "e.toml"
    preset.write_text(re.sub(r"(?m)^fitted_to = .*$", "fitted_to = 3", text))
    with pytest.raises(UserError, match="'fitted_to' must be a string"):
        load_engine(str(preset))
