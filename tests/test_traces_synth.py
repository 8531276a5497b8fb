"""Synthetic traces: byte-identical per seed, and their statistics match their parameters."""

from __future__ import annotations

import hashlib
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


def content_hashes(path) -> list[list[int]]:
    """Each request's prefix block ids rebuilt from what the generator says a prompt is.

    A prompt is the session's system prompt followed by the session's own tokens (its first
    turns' user parts and outputs); two requests hold the same tokens up to a block's end iff
    the block lies inside the same system prompt, or they belong to the same session.
    """
    table = pq.read_table(path)
    block = int(pq.read_schema(path).metadata[b"tokenfleet.prefix_block_size"])
    meta = json.loads(pq.read_schema(path).metadata[SYNTH_METADATA_KEY])
    system_tokens = meta["system_prompt_tokens"] or 0
    hashes = table.column("prefix_hashes").to_pylist()
    sessions = (
        table.column("session_id").to_pylist()
        if "session_id" in table.column_names
        else list(range(table.num_rows))  # one request per session
    )
    # The system prompt is not stored: name it by a request's first block (when it has one).
    keys = []
    for blocks, session, prompt in zip(
        hashes, sessions, table.column("prompt_tokens").to_pylist(), strict=True
    ):
        assert len(blocks) == prompt // block  # only full blocks get ids
        keys.append(
            [
                ("system", blocks[0], i)
                if (i + 1) * block <= system_tokens
                else ("session", session, i)
                for i in range(len(blocks))
            ]
        )
    return hashes, keys


@settings(max_examples=10, deadline=None)
@given(
    system_prompts=st.integers(1, 6),
    system_tokens=st.integers(1, 3000),
    block=st.sampled_from([16, 100, 512]),
    turns=st.sampled_from([None, "fixed:1", "uniform:1,5", "lognormal:3,0.5,8"]),
    seed=st.integers(0, 2**32),
)
def test_equal_block_ids_iff_equal_prefix_content(
    tmp_path_factory, system_prompts, system_tokens, block, turns, seed
):
    path = tmp_path_factory.mktemp("h") / "h.parquet"
    spec = SynthSpec(requests=300, system_prompts=system_prompts,
                     system_prompt_tokens=system_tokens, turns=turns, prefix_block_tokens=block,
                     prompt="uniform:1,600", output="uniform:1,300", seed=seed)  # fmt: skip
    synth_trace(path, spec)
    hashes, keys = content_hashes(path)
    by_id, by_key = {}, {}
    for blocks, key in zip(hashes, keys, strict=True):
        for h, k in zip(blocks, key, strict=True):
            assert by_id.setdefault(h, k) == k  # one id, one content
            assert by_key.setdefault(k, h) == h  # one content, one id
    assert len({k[1] for key in keys for k in key if k[0] == "system"}) <= system_prompts


@settings(max_examples=8, deadline=None)
@given(turns=st.sampled_from(["fixed:4", "uniform:1,6"]), seed=st.integers(0, 2**32))
def test_sessions_grow_by_prompt_and_output_and_keep_arrival_order(tmp_path_factory, turns, seed):
    path = tmp_path_factory.mktemp("s") / "s.parquet"
    spec = SynthSpec(requests=2000, turns=turns, think_time_s="uniform:1,5", seed=seed,
                     system_prompts=3, system_prompt_tokens=700)  # fmt: skip
    synth_trace(path, spec)
    got = columns(path)
    assert len(got["arrival_s"]) == 2000 and (np.diff(got["arrival_s"]) >= 0).all()
    order = np.lexsort((got["turn"], got["session_id"]))
    session, turn = got["session_id"][order], got["turn"][order]
    prompt, output, arrival = (
        got[c][order] for c in ("prompt_tokens", "output_tokens", "arrival_s")
    )
    same = session[1:] == session[:-1]
    assert (turn[1:][same] == turn[:-1][same] + 1).all()  # turns 0, 1, 2, ... with none missing
    assert (turn[1:][~same] == 0).all() and turn[0] == 0
    assert (prompt[1:][same] > prompt[:-1][same] + output[:-1][same]).all()  # + new user tokens
    gaps = arrival[1:][same] - arrival[:-1][same]
    assert gaps.min() >= 1 and gaps.max() <= 5
    assert (prompt[turn == 0] >= 701).all()
    hashes = pq.read_table(path).column("prefix_hashes").to_pylist()
    hashes = [hashes[i] for i in order]
    for i in np.flatnonzero(same):  # a later turn's blocks extend the earlier turn's
        assert hashes[i + 1][: len(hashes[i])] == hashes[i]


def test_session_traces_are_byte_identical_per_seed(tmp_path, runner):
    args = ["--requests", "3000", "--system-prompts", "4", "--system-prompt-tokens", "1500",
            "--turns", "uniform:1,6", "--think-time-s", "lognormal:20,1",
            "--tenants", "2"]  # fmt: skip
    outputs = []
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        path = tmp_path / f"{name}.parquet"
        result = runner.invoke(cli, ["traces", "synth", str(path), *args, "--seed", seed])
        assert result.exit_code == 0, result.output
        outputs.append(path.read_bytes())
    assert outputs[0] == outputs[1] != outputs[2]
    got = columns(tmp_path / "a.parquet")
    # A session keeps one tenant.
    tenant_of = {}
    for s, t in zip(got["session_id"].tolist(), got["tenant"].tolist(), strict=True):
        assert tenant_of.setdefault(s, t) == t


def content_digest(path) -> str:
    """sha256 of a trace's columns and metadata (not of the bytes: pyarrow writes its version)."""
    table = pq.read_table(path)
    meta = {k: v for k, v in pq.read_schema(path).metadata.items() if k != b"ARROW:schema"}
    digest = hashlib.sha256(repr(sorted(meta.items())).encode())
    for name in table.column_names:
        digest.update(repr((name, table.column(name).to_pylist())).encode())
    return digest.hexdigest()


# Digests of `traces synth` output at the commit before prefixes and sessions (791441c).
BEFORE_PREFIXES = {
    "--requests 20000 --seed 1": (
        "2cc869f258fa2e9c31429e09fe527ed1a9a8a30476b36d5cd2bfba0bc79cd86f"
    ),
    "--requests 30000 --seed 3 --tenants 3 --tiers 2 --arrivals diurnal": (
        "38db38498eab007921e9ccb8bd51eb33cced34524ef15181030b427e6e61c4cf"
    ),
    "--duration-s 3000 --seed 3": (
        "f69cfc40921d2eb194b2dd2aaa79b02a4a3ac15d56b25af873442d3783f4ef61"
    ),
}


@pytest.mark.parametrize("args", BEFORE_PREFIXES)
def test_default_generator_is_unchanged(tmp_path, runner, args):
    path = tmp_path / "d.parquet"
    result = runner.invoke(cli, ["traces", "synth", str(path), *args.split()])
    assert result.exit_code == 0, result.output
    assert content_digest(path) == BEFORE_PREFIXES[args]
    assert "prefix_hashes" not in pq.read_schema(path).names


def test_system_prompts_alone_keep_the_plain_stream(tmp_path):
    """One turn per session: the same arrivals and outputs, prompts L tokens longer."""
    synth_trace(tmp_path / "a.parquet", SynthSpec(requests=5000, seed=4))
    synth_trace(tmp_path / "b.parquet", SynthSpec(requests=5000, seed=4, system_prompts=10,
                                                  system_prompt_tokens=1200))  # fmt: skip
    a, b = columns(tmp_path / "a.parquet"), columns(tmp_path / "b.parquet")
    assert np.array_equal(a["arrival_s"], b["arrival_s"])
    assert np.array_equal(a["output_tokens"], b["output_tokens"])
    assert np.array_equal(a["prompt_tokens"] + 1200, b["prompt_tokens"])
    assert "session_id" not in b
    first = [
        h[0] for h in pq.read_table(tmp_path / "b.parquet").column("prefix_hashes").to_pylist()
    ]
    counts = np.bincount(
        np.array(first) // 2
    )  # 2 blocks each. Zipf 1: prompt k is chosen about 1/k as often as the first
    assert len(counts) == 10 and counts[0] / counts[1] == pytest.approx(2, rel=0.2)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SynthSpec(requests=5, system_prompts=3), "give --system-prompts N and --system-prompt"),
        (SynthSpec(requests=5, system_prompt_tokens=30), "give --system-prompts N and"),
        (SynthSpec(requests=5, system_prompts=0, system_prompt_tokens=3), "--system-prompts 0: "),
        (SynthSpec(requests=5, prefix_zipf=1.2), "--prefix-zipf sets system prompt popularity"),
        (SynthSpec(requests=5, system_prompts=2, system_prompt_tokens=3, prefix_zipf=-1),
         "--prefix-zipf -1: expected an exponent >= 0"),
        (SynthSpec(requests=5, think_time_s="fixed:3"), "--think-time-s is the gap between turns"),
        (SynthSpec(requests=5, turns="fixed:2", think_time_s="fixed:-1"), "--think-time-s 'fix"),
        (SynthSpec(requests=5, turns="fixed:0"), "--turns 'fixed:0'"),
        (SynthSpec(requests=5, prefix_block_tokens=16), "--prefix-block-tokens sizes prefix_hash"),
        (SynthSpec(requests=5, turns="fixed:2", prefix_block_tokens=0), "--prefix-block-tokens 0"),
    ],
)  # fmt: skip
def test_bad_prefix_settings_are_refused(tmp_path, spec, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        synth_trace(tmp_path / "x.parquet", spec)
    assert list(tmp_path.iterdir()) == []
