"""Synthetic traces: byte-identical per seed, and their statistics match their parameters."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TRACES
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfleet.cli.main import cli
from tokenfleet.errors import UserError
from tokenfleet.traces.convert import convert_trace
from tokenfleet.traces.synth import SYNTH_METADATA_KEY, SynthSpec, parse_length, synth_trace


def columns(path) -> dict[str, np.ndarray]:
    table = pq.read_table(path)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def test_quick_start_command_is_byte_identical_per_seed(tmp_path, runner):
    outputs = []
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        path = tmp_path / f"{name}.parquet"
        args = ["traces", "synth", str(path), "--requests", "20000", "--seed", seed]
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert "20,000 requests" in result.output
        outputs.append(path.read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_defaults_resemble_the_azure_conversation_trace(tmp_path):
    synth_trace(tmp_path / "d.parquet", SynthSpec(requests=100_000, seed=3))
    got = columns(tmp_path / "d.parquet")
    # README: Azure conv 5.53 req/s, prompt mean 1,155 / median 1,020, output 211.1 / 129 / 1,000.
    assert len(got["arrival_s"]) / got["arrival_s"][-1] == pytest.approx(5.5, rel=0.02)
    assert got["prompt_tokens"].mean() == pytest.approx(1155, rel=0.02)
    assert np.median(got["prompt_tokens"]) == pytest.approx(1020, rel=0.02)
    assert got["output_tokens"].mean() == pytest.approx(211, rel=0.03)
    assert np.median(got["output_tokens"]) == pytest.approx(129, rel=0.03)
    assert got["output_tokens"].max() == 1000


@settings(max_examples=12, deadline=None)
@given(
    rate=st.floats(0.01, 1000),
    cv=st.floats(0.3, 4),
    seed=st.integers(0, 2**32),
)
def test_gamma_arrivals_have_the_rate_and_cv_asked_for(tmp_path_factory, rate, cv, seed):
    path = tmp_path_factory.mktemp("g") / "g.parquet"
    n = 40_000
    synth_trace(path, SynthSpec(requests=n, arrivals="gamma", rate_rps=rate, cv=cv, seed=seed))
    arrival = columns(path)["arrival_s"]
    gaps = np.diff(np.concatenate([[0.0], arrival]))
    # Standard errors: mean gap sd/sqrt(n); the CV's from the gamma's kurtosis (6 / shape).
    assert gaps.mean() == pytest.approx(1 / rate, rel=6 * cv / math.sqrt(n))
    cv_se = math.sqrt((6 * cv**2 + 2) / (4 * n))
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=6 * cv_se + 0.01)


def test_poisson_gaps_are_exponential(tmp_path):
    synth_trace(tmp_path / "p.parquet", SynthSpec(requests=50_000, rate_rps=20, seed=5))
    gaps = np.diff(columns(tmp_path / "p.parquet")["arrival_s"])
    # Exponential: P(gap > t) = exp(-rate t) at several t.
    for t in (0.01, 0.05, 0.1, 0.2):
        assert (gaps > t).mean() == pytest.approx(math.exp(-20 * t), abs=0.01)


def test_diurnal_curve_has_its_peak_hour_ratio_and_mean(tmp_path):
    spec = SynthSpec(duration_s=4 * 86_400, arrivals="diurnal", rate_rps=3, peak_trough=5,
                     peak_hour=20.5, seed=2)  # fmt: skip
    result = synth_trace(tmp_path / "d.parquet", spec)
    arrival = columns(tmp_path / "d.parquet")["arrival_s"]
    assert result["rows"] == len(arrival)
    assert arrival[-1] < 4 * 86_400
    assert len(arrival) / (4 * 86_400) == pytest.approx(3, rel=0.01)
    # Rate at each half hour of the day, over 4 days, against r (1 + a cos(...)).
    half_hours = np.bincount(((arrival % 86_400) // 1800).astype(int), minlength=48) / (4 * 1800)
    a = (5 - 1) / (5 + 1)
    centres = (np.arange(48) + 0.5) * 1800
    expected = 3 * (1 + a * np.cos(2 * np.pi * (centres - 20.5 * 3600) / 86_400))
    assert np.abs(half_hours - expected).max() < 0.3  # ~5 standard errors at the peak
    assert np.argmax(half_hours) in (40, 41)  # 20:00-21:00
    assert half_hours.max() / half_hours.min() == pytest.approx(5, rel=0.2)


@pytest.mark.parametrize(
    ("text", "check"),
    [
        ("fixed:512", lambda x: (x == 512).all()),
        ("uniform:10,20", lambda x: x.min() == 10 and x.max() == 20
         and abs(x.mean() - 15) < 0.05 and len(np.unique(x)) == 11),
        ("lognormal:800,0.8", lambda x: abs(x.mean() / 800 - 1) < 0.02
         and abs(np.median(x) / (800 * math.exp(-0.32)) - 1) < 0.02),
        ("lognormal:800,1.5,2000", lambda x: x.max() == 2000 and x.min() >= 1),
    ],
)  # fmt: skip
def test_length_distributions_match_their_parameters(tmp_path, text, check):
    synth_trace(tmp_path / "l.parquet", SynthSpec(requests=60_000, prompt=text, output=text))
    got = columns(tmp_path / "l.parquet")
    assert check(got["prompt_tokens"]) and check(got["output_tokens"])


def test_tenant_and_tier_shares_and_independent_streams(tmp_path, runner):
    args = ["--requests", "100000", "--seed", "4"]
    shares = ["--tenants", "acme=0.6,globex=0.3,initech=0.1", "--tiers", "fast=1,standard=3"]
    runner.invoke(cli, ["traces", "synth", str(tmp_path / "a.parquet"), *args, *shares])
    runner.invoke(cli, ["traces", "synth", str(tmp_path / "b.parquet"), *args])
    a, b = columns(tmp_path / "a.parquet"), columns(tmp_path / "b.parquet")
    for name, share in (("acme", 0.6), ("globex", 0.3), ("initech", 0.1)):
        assert (a["tenant"] == name).mean() == pytest.approx(share, abs=0.006)
    assert (a["tier"] == "fast").mean() == pytest.approx(0.25, abs=0.006)
    # Shares use their own random streams: arrivals and lengths are unchanged.
    for name in ("arrival_s", "prompt_tokens", "output_tokens"):
        assert np.array_equal(a[name], b[name])
    inspected = json.loads(runner.invoke(cli, ["traces", "inspect", str(tmp_path / "a.parquet"),
                                               "--json"]).output)  # fmt: skip
    assert list(inspected["tenants"]) == ["acme", "globex", "initech"]
    assert sum(inspected["tiers"].values()) == 100_000


def test_lengths_resampled_from_a_real_trace_keep_its_pairs(tmp_path):
    real = tmp_path / "conv.parquet"
    convert_trace(TRACES / "AzureLLMInferenceTrace_conv.csv", real)
    source = columns(real)
    synth_trace(tmp_path / "r.parquet", SynthSpec(requests=50_000, lengths_from=str(real)))
    got = columns(tmp_path / "r.parquet")
    pairs = set(
        zip(source["prompt_tokens"].tolist(), source["output_tokens"].tolist(), strict=True)
    )
    assert all(p in pairs for p in zip(got["prompt_tokens"].tolist(), got["output_tokens"].tolist(),
                                        strict=True))  # fmt: skip
    assert got["prompt_tokens"].mean() == pytest.approx(source["prompt_tokens"].mean(), rel=0.02)


def test_duration_and_provenance(tmp_path):
    synth_trace(tmp_path / "d.parquet", SynthSpec(duration_s=600, rate_rps=10, seed=9))
    arrival = columns(tmp_path / "d.parquet")["arrival_s"]
    assert arrival[-1] < 600 and len(arrival) == pytest.approx(6000, abs=6 * math.sqrt(6000))
    meta = json.loads(pq.read_schema(tmp_path / "d.parquet").metadata[SYNTH_METADATA_KEY])
    assert meta["seed"] == 9 and meta["duration_s"] == 600 and meta["cv"] == 1.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SynthSpec(), "give exactly one of --requests"),
        (SynthSpec(requests=10, duration_s=5), "give exactly one of --requests"),
        (SynthSpec(requests=10, cv=2), "--cv 2 needs --arrivals gamma"),
        (SynthSpec(requests=10, arrivals="weekly"), "--arrivals 'weekly': expected one of"),
        (SynthSpec(requests=10, rate_rps=0), "--rate 0: expected requests per second > 0"),
        (SynthSpec(requests=10, peak_trough=0.5), "--peak-trough 0.5: expected a ratio >= 1"),
        (SynthSpec(requests=10, prompt="normal:5,1"), "--prompt 'normal:5,1': expected"),
        (SynthSpec(requests=10, lengths_from="x.parquet", output="fixed:3"), "--lengths-from"),
        (SynthSpec(duration_s=0.001, rate_rps=0.001), "too short for any request"),
    ],
)
def test_bad_settings_are_refused_and_write_nothing(tmp_path, spec, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        synth_trace(tmp_path / "x.parquet", spec)
    assert list(tmp_path.iterdir()) == []


def test_parse_length_refuses_bad_parameters():
    for text in ("uniform:5,2", "fixed:0", "fixed:2.5", "lognormal:0,1", "lognormal:5", "x"):
        with pytest.raises(UserError):
            parse_length(text, "--prompt")
