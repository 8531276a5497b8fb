"""What prefix caching costs the replay, and how fast a cache-heavy trace replays (a script, not
a test; prints figures).

Two cases, each run in fresh spawned processes (bench_replay.py's `measure`), interleaved so
that drift in the machine's speed falls on both sides of a ratio:

- `--case azure`: the Azure conv trace tiled to --requests (1,000,000) on --replicas (64) at
  the auto-sizing load, caching on and off. The trace has no prefix hashes and no sessions, so
  the records are the same (checked) and the ratio is what caching costs when it has nothing to
  find.
- `--case mooncake`: the Mooncake synthetic trace tiled to --requests (200,000) on --replicas
  (16) with --balancer (cache-aware), its copies re-keyed so they do not hit each other, or
  not (both are run); then every prompt 10 times longer in blocks (each 512-token block id
  becomes ten) at a tenth of the rate, to show the cost per request stays flat. Arrivals are
  time-scaled so the fleet's estimated load (caching off) is the sizing target. Each case is
  also set against bench_replay.py's floor (a plain heapq loop of 3 events per request) on the
  same requests, a ratio that travels between hosts better than the rate.

    python scripts/bench_prefix.py --case azure [--requests 1000000] [--repeat 3]
    python scripts/bench_prefix.py --case mooncake [--requests 200000] [--balancer cache-aware]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replay import (  # noqa: E402
    ROOT,
    fastest,
    fleet_rate,
    measure,
    measure_floor,
    show,
    tiled_trace,
)

MOONCAKE = ROOT.parent / "shared" / "data" / "traces" / "mooncake_synthetic_trace.jsonl"
COMPARED = ("finished", "tokens", "steps", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "e2e_p50_s")


def scenario_file(directory: Path, name: str, replicas: int, balancer: str, caching: bool) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(
        f'[balancer]\npolicy = "{balancer}"\n\n[[pools]]\nreplicas = {replicas}\n'
        f'[pools.batcher]\npolicy = "vllm"\nenable_prefix_caching = {str(caching).lower()}\n'
    )
    return path


def azure(args, tmp: Path) -> None:
    trace = tmp / "azure.parquet"
    rate = fleet_rate("h100-sxm", args.replicas, 1)
    tiled_trace(trace, args.requests, rate, 1)
    on = scenario_file(tmp, "on", args.replicas, "least-requests", True)
    off = scenario_file(tmp, "off", args.replicas, "least-requests", False)
    runs = {"on": [], "off": []}
    for _ in range(args.repeat):
        for name, scenario in (("off", off), ("on", on)):
            runs[name].append(measure(trace, "h100-sxm", args.replicas, scenario=scenario))
    best = {k: fastest(v) for k, v in runs.items()}
    for name in ("off", "on"):
        show(f"azure conv x{args.requests:,}, caching {name}", best[name])
    same = all(best["on"][k] == best["off"][k] for k in COMPARED)
    print(
        f"  caching on / off wall: {best['on']['wall_s'] / best['off']['wall_s']:.3f}x "
        f"(fastest of {args.repeat} each; pairs: "
        + ", ".join(
            f"{a['wall_s'] / b['wall_s']:.3f}" for a, b in zip(runs["on"], runs["off"], strict=True)
        )
        + f"); summary figures identical: {same}"
    )


def mooncake_trace(path: Path, requests: int, rekey: bool, longer: int, rate: float) -> None:
    """The Mooncake trace tiled to `requests`, each prompt `longer` x as many blocks, arrivals
    at `rate` requests/s."""
    from tokenfleet.traces.convert import convert_trace

    source = path.with_suffix(".source.parquet")
    convert_trace(MOONCAKE, source)
    table = pq.read_table(source)
    n = table.num_rows
    copies = -(-requests // n)
    hashes = table.column("prefix_hashes")
    top = int(pa.compute.max(pa.compute.list_flatten(hashes)).as_py()) + 1
    offsets = hashes.combine_chunks().offsets.to_numpy()
    flat = pa.compute.list_flatten(hashes).to_numpy()
    lengths = np.diff(offsets)
    all_hashes, prompts = [], []
    for c in range(copies):
        ids = flat + (c * top if rekey else 0)
        if longer > 1:  # block id h becomes h*longer .. h*longer+longer-1
            ids = (ids[:, None] * longer + np.arange(longer)).reshape(-1)
        all_hashes.append(ids)
    ids = np.concatenate(all_hashes)
    prompts = np.tile(table.column("prompt_tokens").to_numpy() * longer, copies)[:requests]
    full = np.tile(lengths * longer, copies)[:requests]
    block = int(table.schema.metadata[b"tokenfleet.prefix_block_size"])
    list_lengths = np.minimum(full, -(-prompts // block))  # a partial last block: fewer ids
    starts = np.zeros(requests, np.int64)
    np.cumsum(full[:-1], out=starts[1:])
    keep = np.arange(int(full.sum())) - np.repeat(starts, full) < np.repeat(list_lengths, full)
    ids = ids[: int(full.sum())][keep]
    list_offsets = np.zeros(requests + 1, np.int64)
    np.cumsum(list_lengths, out=list_offsets[1:])
    outputs = np.tile(table.column("output_tokens").to_numpy(), copies)[:requests]
    arrivals = np.arange(requests) / rate
    out = pa.table(
        {
            "arrival_s": arrivals,
            "prompt_tokens": pa.array(prompts, pa.int32()),
            "output_tokens": pa.array(outputs, pa.int32()),
            "prefix_hashes": pa.ListArray.from_arrays(
                pa.array(list_offsets), pa.array(ids, pa.int64())
            ),
        }
    ).replace_schema_metadata(table.schema.metadata)
    pq.write_table(out, path, row_group_size=65_536)


def mooncake_rate(replicas: int, longer: int) -> float:
    """Requests/s that load the fleet at the sizing target, caching aside."""
    from tokenfleet.hardware.profile import load_profile
    from tokenfleet.models import get_model
    from tokenfleet.perf.steptime import StepTime
    from tokenfleet.replay.fleet import TARGET_UTILISATION, TraceStats, replica_seconds_per_request
    from tokenfleet.traces.convert import convert_trace

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.parquet"
        convert_trace(MOONCAKE, path)
        table = pq.read_table(path, columns=["prompt_tokens", "output_tokens"])
    prompt = table.column("prompt_tokens").to_numpy().mean() * longer
    output = table.column("output_tokens").to_numpy().mean()
    stats = TraceStats(table.num_rows, 1.0, prompt, output)
    step_time = StepTime(get_model("llama-3.1-8b"), load_profile("h100-sxm"))
    return replicas * TARGET_UTILISATION / replica_seconds_per_request(step_time, stats, 256)


def mooncake(args, tmp: Path) -> None:
    scenario = scenario_file(tmp, "cached", args.replicas, args.balancer, True)
    results = {}
    for label, rekey, longer in (
        ("re-keyed copies", True, 1),
        ("copies share ids", False, 1),
        ("re-keyed, prompts 10x blocks", True, 10),
    ):
        trace = tmp / f"mooncake-{rekey}-{longer}.parquet"
        mooncake_trace(trace, args.requests, rekey, longer, mooncake_rate(args.replicas, longer))
        runs = [
            measure(trace, "h100-sxm", args.replicas, scenario=scenario) for _ in range(args.repeat)
        ]
        results[label] = best = fastest(runs)
        show(f"mooncake x{args.requests:,}, {label}", best)
        floor = measure_floor(trace)
        print(
            f"  {best['wall_s'] / floor['wall_s']:.1f}x the floor (bench_replay.py's heapq loop "
            f"on the same requests: {floor['requests_per_wall_s']:,.0f} req/s here and now)"
        )
    base = results["re-keyed copies"]
    long = results["re-keyed, prompts 10x blocks"]
    print(
        "  cost per request, prompts 10x blocks / as they are: "
        f"{(long['wall_s'] / long['requests']) / (base['wall_s'] / base['requests']):.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("azure", "mooncake"), required=True)
    parser.add_argument("--requests", type=int)
    parser.add_argument("--replicas", type=int)
    parser.add_argument("--balancer", default="cache-aware")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    defaults = {"azure": (1_000_000, 64), "mooncake": (200_000, 16)}[args.case]
    args.requests = args.requests or defaults[0]
    args.replicas = args.replicas or defaults[1]
    print(f"python {platform.python_version()} ({sys.executable}), {platform.node()}")
    with tempfile.TemporaryDirectory() as tmp:
        (azure if args.case == "azure" else mooncake)(args, Path(tmp))


if __name__ == "__main__":
    main()
