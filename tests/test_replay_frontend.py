"""The engine's frontend (CLIENT_KEYS of an engine preset): a request reaches the engine's
queue `frontend_in_ms` after it was routed, every token reaches the client `frontend_out_ms`
after its step; with both at 0 nothing changes. Each test compares vllm-v1's engine with and
without them, its own fitted frontend keys taken out."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenfleet.errors import UserError
from tokenfleet.hardware.profile import load_engine
from tokenfleet.replay.run import run_replay
from tokenfleet.replay.scenario import scenario_from_dict, validate

ENGINES = Path(__file__).resolve().parents[1] / "tokenfleet/hardware/profiles/engines"


def engine_file(tmp_path: Path, **client) -> Path:
    """vllm-v1 with only the given frontend keys, as a preset file."""
    text = (ENGINES / "vllm-v1.toml").read_text().replace('name = "vllm-v1"', 'name = "mine"')
    text = text.replace('aliases = ["vllm"]', "aliases = []")
    text = re.sub(r"(?m)^frontend_\w+ = .*\n", "", text)
    text += "".join(f"{k} = {v}\n" for k, v in client.items())
    path = tmp_path / f"engine-{len(client)}-{abs(hash(tuple(client.items())))}.toml"
    path.write_text(text)
    return path


def replay(tmp_path: Path, engine: Path | str) -> pa.Table:
    n = 400
    trace = tmp_path / "trace.parquet"
    if not trace.exists():
        rng = np.random.default_rng(3)
        pq.write_table(
            pa.table(
                {
                    "arrival_s": np.arange(n) * 0.05,
                    "prompt_tokens": pa.array(rng.integers(50, 800, n), pa.int32()),
                    "output_tokens": pa.array(rng.integers(1, 200, n), pa.int32()),
                }
            ),
            trace,
        )
    scenario = validate(
        scenario_from_dict(
            {
                "balancer": {"policy": "least-requests"},
                "pools": [{"replicas": 1, "engine": str(engine)}],
            }  # fmt: skip
        )
    )
    out = tmp_path / f"out-{Path(str(engine)).stem}"
    run_replay(trace, scenario, out)
    return pq.read_table(out / "requests.parquet")


def test_zero_frontend_terms_change_nothing(tmp_path):
    plain = replay(tmp_path, engine_file(tmp_path))
    zero = replay(tmp_path, engine_file(tmp_path, frontend_in_ms=0.0, frontend_out_ms=0.0))
    for name in ("start_s", "first_token_s", "finish_s", "replica", "gpu_s"):
        assert plain.column(name).equals(zero.column(name)), name


def test_frontend_out_delays_every_token_alike(tmp_path):
    plain = replay(tmp_path, engine_file(tmp_path))
    late = replay(tmp_path, engine_file(tmp_path, frontend_out_ms=5.0))
    assert late.column("start_s").equals(plain.column("start_s"))  # the engine is untouched
    for name in ("first_token_s", "finish_s"):
        shift = late.column(name).to_numpy() - plain.column(name).to_numpy()
        assert np.allclose(shift, 0.005, rtol=0, atol=1e-12), name


def test_frontend_in_holds_a_request_before_the_engine_queues_it(tmp_path):
    """One replica: every request reaches the engine 7 ms later, so the engine's whole
    schedule moves by 7 ms (the arrivals keep their spacing)."""
    plain = replay(tmp_path, engine_file(tmp_path))
    held = replay(tmp_path, engine_file(tmp_path, frontend_in_ms=7.0))
    assert held.column("arrival_s").equals(plain.column("arrival_s"))
    for name in ("start_s", "first_token_s", "finish_s"):
        shift = held.column(name).to_numpy() - plain.column(name).to_numpy()
        assert np.allclose(shift, 0.007, rtol=0, atol=1e-9), name


def test_a_request_in_the_frontend_counts_for_the_balancer(tmp_path):
    """Least-requests counts a request from the moment it is routed, as a router does: one
    long request busies replica 0, then a burst arrives faster than the frontend (500 ms)
    passes it on. Counted at routing, the burst alternates between the replicas; counted only
    once queued, every one of them would go to replica 1, which would look empty."""
    trace = tmp_path / "burst.parquet"
    arrivals = [0.0] + [1.0 + 0.01 * k for k in range(6)]
    pq.write_table(
        pa.table(
            {
                "arrival_s": arrivals,
                "prompt_tokens": pa.array([100] * 7, pa.int32()),
                "output_tokens": pa.array([2000] + [10] * 6, pa.int32()),
            }
        ),
        trace,
    )
    scenario = validate(
        scenario_from_dict(
            {"balancer": {"policy": "least-requests"},
             "pools": [{"replicas": 2, "engine": str(engine_file(tmp_path, frontend_in_ms=500.0))}]}
        )
    )  # fmt: skip
    run_replay(trace, scenario, tmp_path / "out")
    done = pq.read_table(tmp_path / "out" / "requests.parquet").to_pylist()
    by_arrival = [r["replica"] for r in sorted(done, key=lambda r: r["arrival_s"])]
    assert by_arrival[0] == 0
    assert by_arrival[1:] == [1, 0, 1, 0, 1, 0]


def test_frontend_keys_are_optional_and_checked(tmp_path):
    assert load_engine(str(engine_file(tmp_path))).frontend_in_ms == 0.0
    loaded = load_engine(str(engine_file(tmp_path, frontend_in_ms=3.5)))
    assert (loaded.frontend_in_ms, loaded.frontend_out_ms) == (3.5, 0.0)
    with pytest.raises(UserError, match="key 'frontend_out_ms' must be >= 0"):
        load_engine(str(engine_file(tmp_path, frontend_out_ms=-1.0)))
