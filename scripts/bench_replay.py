"""Speed and memory of `tokenfleet replay` (a script, not a test; prints figures).

Tiles the Azure conv trace (../shared/data) to N requests (1,000,000 by default) and compresses
time so that 64 replicas carry the load that "auto" sizing gives them (--load 1.5: half as much
again, a busier but still healthy fleet), then replays it and
prints simulated requests and tokens per wall-second and peak RSS. It repeats on a slice with
--step-by-step (the speed-up of advancing decode runs at once) and with every output length x10
at the same load (arrivals spread to keep the estimated utilisation), to show the cost per
request stays flat. Each run is a separate process importing the tokenfleet of the checkout this
script is in, so each RSS figure is its own. Speeds are
per wall-second and per CPU-second of the run (the CPU figure is steadier on a shared machine).

With --baseline DIR (another checkout of tokenfleet, e.g. `git worktree add /tmp/base HEAD`),
every run is repeated with that checkout's package right after the current one, and the speed-up
is printed: a before/after comparison in one invocation, under the same machine load.

    python scripts/bench_replay.py [--requests 1000000] [--replicas 64] [--gpu h100-sxm] [--load 1]
                                   [--baseline DIR] [--repeat N] [--balancer NAME] [--json]
    python scripts/bench_replay.py --replicas 64,512,4096 [--requests 1000000] [--repeat N]

With several --replicas counts it measures only how the cost per request moves with the fleet's
size (issue 15's target: 4,096 replicas within 1.3x of 64): each size replays the same number
of requests at a rate scaled to it, so every fleet is loaded alike (~70% busy at --load 1).
                                   [--peer splitwise --peer-dir DIR --peer-python PATH]

With --repeat N the main case runs N times and the fastest is reported, with every run's time:
on a shared host the others' load only ever slows a run down.

Absolute rates move with the host and the hour, so two ratios that travel are printed beside
them, each measured in the same invocation and interleaved with the replays (replay, floor,
replay, floor, ...) so that drift in the machine's speed falls on both:

- "x the floor": replay wall time / the wall time of the floor on the same requests. The floor
  (`floor_loop`) is the least any discrete-event simulator written in Python pays: one heapq
  heap, and for each request 3 events pushed and popped as tuples (arrival, first token,
  finish), arrivals fed one at a time so the heap holds what is in flight, the first token at
  arrival + a fixed time per prompt token, the finish at that + a fixed time per output token
  (FLOOR_TIMES: about the replayed fleet's median TTFT and TPOT, so the heap is about as deep;
  its depth moves the floor only by its logarithm), and each finish time stored in a list.
  It does not read the trace (its arrays are turned into Python lists before the clock
  starts), write any file, batch, price a step, hold a KV cache or pick a replica; the replay's
  time includes all of that, from reading the Parquet trace to writing summary.json. Its own
  rate is printed as events/s. Same interpreter, a fresh spawned process like each replay.
  The ratio of CPU times is printed too (steadier when others load the host).
- "x SplitwiseSim" (`--peer splitwise`, not run in CI): tokenfleet wall / SplitwiseSim wall on
  one trace (the Azure conv trace tiled to --peer-requests, written as Parquet for tokenfleet
  and as SplitwiseSim's CSV), on as close a configuration as the two share: Llama-2-70B in
  fp16, one replica of tensor parallelism 8 per DGX machine (--peer-machines, --peer-gpu a100
  or h100), at most 512 sequences and 2,048 batched tokens per step, SplitwiseSim's Baseline
  (mixed batching, token_jsq scheduler, its profiled performance model) against tokenfleet's
  vllm batcher, least-tokens balancer and the vllm-v0-2023 engine (fitted to Splitwise's A100
  measurements). Both walls cover reading the trace, simulating and writing the results, in
  the same CPython; SplitwiseSim's interpreter start, imports and Hydra set-up are printed
  apart. The differences that remain are printed with the figures. scripts/peer_splitwise.py
  runs it; its docstring has the one-time set-up (a checkout and a venv outside this one):

    python scripts/bench_replay.py --peer splitwise --peer-dir /work/peer/splitwise-sim \
        --peer-python /work/peer-venv/bin/python [--peer-requests 20000] [--peer-machines 16]
"""

from __future__ import annotations

import argparse
import heapq
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
AZURE_CONV = ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
# The floor's trivially computed event times, seconds per prompt and per output token: about
# the median TTFT / mean prompt and the median TPOT of the replayed fleet (main: Llama-3.1-8B on
# H100; --peer: Llama-2-70B on 8 GPUs), so that the heap is about as deep as the replay's.
FLOOR_TIMES = {"main": (2.5e-5, 0.0085), "peer": (2e-4, 0.06)}
# --peer splitwise: SplitwiseSim's DGX machine and its model name for each --peer-gpu.
PEER_GPUS = {"a100": ("dgx-a100", "a100-80gb"), "h100": ("dgx-h100", "h100-sxm")}
PEER_MODEL = ("llama2-70b", "llama-2-70b")  # SplitwiseSim's name, tokenfleet's name
PEER_DIFFERENCES = (
    "step times: SplitwiseSim interpolates its DGX profile by batch tokens alone; tokenfleet "
    "prices each step from FLOPs and bytes (prompt, context, batch) with the vllm-v0-2023 engine",
    "prefill: SplitwiseSim runs a prompt whole (one over 2,048 tokens alone in its step); "
    "tokenfleet's vllm batcher chunks prompts to the 2,048-token budget",
    "memory: SplitwiseSim preempts token tasks (up to 4 times) under its memory bound; "
    "tokenfleet pages a KV cache of 16-token blocks and preempts by recompute",
    "routing: token_jsq counts prompt tokens not yet prefilled plus 1 per unfinished request; "
    "least-tokens counts prompt plus output tokens not yet generated",
    "records: SplitwiseSim writes summary.csv and per-request/per-node CSVs; tokenfleet writes "
    "requests.parquet, timeline.parquet and summary.json (with costs)",
)


def azure_conv() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrival seconds, prompt and output tokens of the Azure conv trace."""
    import pyarrow.csv as pcsv

    table = pcsv.read_csv(AZURE_CONV)
    stamps = table.column("TIMESTAMP").to_numpy().astype("datetime64[ns]").astype(np.int64)
    arrivals = (stamps - stamps[0]) / 1e9
    return (
        arrivals,
        table.column("ContextTokens").to_numpy().astype(np.int32),
        table.column("GeneratedTokens").to_numpy().astype(np.int32),
    )


def tiled_trace(path: Path, requests: int, rate: float, output_scale: int) -> pa.Table:
    """The conv trace repeated end to end, then time-scaled to `rate` requests/s."""
    arrivals, prompts, outputs = azure_conv()
    span = arrivals[-1] + (arrivals[-1] / len(arrivals))
    reps = -(-requests // len(arrivals))
    arr = np.concatenate([arrivals + k * span for k in range(reps)])[:requests]
    arr *= (len(arrivals) / span) / rate
    table = pa.table(
        {
            "arrival_s": arr,
            "prompt_tokens": np.tile(prompts, reps)[:requests],
            "output_tokens": np.tile(outputs, reps)[:requests] * output_scale,
        }
    )
    pq.write_table(table, path, row_group_size=65_536)
    return table


def fleet_rate(
    gpu: str,
    replicas: int,
    output_scale: int,
    model: str = "llama-3.1-8b",
    tp: int = 1,
    dtype: str = "bf16",
    engine: str | None = None,
    max_seqs: int = 256,
) -> float:
    """Requests/s that load `replicas` replicas at the sizing target (same rule as "auto")."""
    from tokenfleet.hardware.profile import load_profile
    from tokenfleet.models import get_model
    from tokenfleet.perf.steptime import StepTime
    from tokenfleet.replay.fleet import TARGET_UTILISATION, TraceStats, replica_seconds_per_request

    _, prompts, outputs = azure_conv()
    stats = TraceStats(len(prompts), 1.0, prompts.mean(), outputs.mean() * output_scale)
    step_time = StepTime(get_model(model), load_profile(gpu), tp, dtype, engine=engine)
    per_request = replica_seconds_per_request(step_time, stats, max_seqs)
    return replicas * TARGET_UTILISATION / per_request


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started its interpreter. Linux's
    ru_maxrss survives exec, so a spawned child would report its parent's size at the fork
    (2.2 GB for bench_prefix.py's third case, whose parent held three traces; the child's own
    peak was 0.67 GB); the address space's high-water mark, VmHWM, starts afresh."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(trace: str, args: dict, queue) -> None:
    sys.path.insert(0, args["root"])  # that checkout's package, whichever one is installed
    from tokenfleet.replay.run import run_replay
    from tokenfleet.replay.scenario import load_scenario, with_overrides

    if args["scenario"]:
        scenario = load_scenario(args["scenario"])
    else:
        scenario = with_overrides(
            load_scenario(None),
            gpu=args["gpu"],
            replicas=args["replicas"],
            balancer=args["balancer"],
        )
    with tempfile.TemporaryDirectory() as out:
        cpu = time.process_time()
        start = time.perf_counter()
        summary = run_replay(trace, scenario, Path(out) / "run", step_by_step=args["sbs"])
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
    queue.put(
        {
            "wall_s": wall,
            "cpu_s": cpu,
            "requests": summary["requests"],
            "finished": summary["finished"],
            "tokens": summary["tokens"]["input"] + summary["tokens"]["output"],
            "output_tokens": summary["tokens"]["output"],
            "steps": summary["steps"],
            "mean_batch": summary["mean_batch"],
            # Named gpu_busy_frac before issue 11 (a baseline checkout may be older).
            "step_busy_frac": summary.get("step_busy_frac", summary.get("gpu_busy_frac")),
            "ttft_p50_s": summary["latency_s"]["ttft"]["p50"],
            "ttft_p99_s": summary["latency_s"]["ttft"]["p99"],
            "tpot_p50_s": summary["latency_s"]["tpot"]["p50"],
            "e2e_p50_s": summary["latency_s"]["e2e"]["p50"],
            "preemptions": summary["preemptions"],
            "peak_rss_bytes": peak_rss_bytes(),
        }
    )


def measure(
    trace: Path,
    gpu: str,
    replicas: int,
    step_by_step: bool = False,
    root: Path = ROOT,
    balancer: str = "least-requests",
    scenario: Path | None = None,
) -> dict:
    """One replay in a fresh spawned process: its wall and CPU time and summary figures."""
    args = {
        "gpu": gpu,
        "replicas": replicas,
        "balancer": balancer,
        "sbs": step_by_step,
        "root": str(root),
        "scenario": str(scenario) if scenario else None,
    }
    result = _spawn(_child, str(trace), args)
    result["requests_per_wall_s"] = result["requests"] / result["wall_s"]
    result["requests_per_cpu_s"] = result["requests"] / result["cpu_s"]
    result["tokens_per_wall_s"] = result["tokens"] / result["wall_s"]
    return result


def _spawn(target, *args) -> dict:
    """Run `target(*args, queue)` in a fresh interpreter and return what it put on the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:  # a child that died (its traceback is on stderr) never puts anything
        try:
            result = queue.get(timeout=5)
            break
        except Exception:
            if not proc.is_alive():
                sys.exit(f"error: the child process {target.__name__} failed (see above)")
    proc.join()
    return result


def floor_loop(
    arrivals: list[float],
    prompts: list[int],
    outputs: list[int],
    prefill: float = FLOOR_TIMES["main"][0],
    decode: float = FLOOR_TIMES["main"][1],
) -> list[float]:
    """The floor: 3 heap events per request (arrival, first token, finish); finish times.

    Arrivals are pushed one at a time (each arrival pushes the next), so the heap holds the
    requests in flight, as a simulator's does. Ties fall to the request index, then the kind.
    """
    push, pop = heapq.heappush, heapq.heappop
    n = len(arrivals)
    finish = [0.0] * n
    heap: list[tuple[float, int, int]] = [(arrivals[0], 0, 0)] if n else []
    while heap:
        t, i, kind = pop(heap)
        if kind == 0:  # arrival: the next arrival, and this request's first token
            if i + 1 < n:
                push(heap, (arrivals[i + 1], i + 1, 0))
            push(heap, (t + prefill * prompts[i], i, 1))
        elif kind == 1:  # first token: the finish
            push(heap, (t + decode * outputs[i], i, 2))
        else:
            finish[i] = t
    return finish


def _floor_child(trace: str, times: tuple[float, float], queue) -> None:
    table = pq.read_table(trace, columns=["arrival_s", "prompt_tokens", "output_tokens"])
    arrivals = table.column("arrival_s").to_pylist()
    prompts = table.column("prompt_tokens").to_pylist()
    outputs = table.column("output_tokens").to_pylist()
    cpu = time.process_time()
    start = time.perf_counter()
    finish = floor_loop(arrivals, prompts, outputs, *times)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    queue.put({"wall_s": wall, "cpu_s": cpu, "requests": len(finish), "events": 3 * len(finish)})


def measure_floor(trace: Path, times: tuple[float, float] = FLOOR_TIMES["main"]) -> dict:
    """The floor on `trace` in a fresh spawned process (same interpreter as the replays)."""
    result = _spawn(_floor_child, str(trace), times)
    result["events_per_wall_s"] = result["events"] / result["wall_s"]
    result["requests_per_wall_s"] = result["requests"] / result["wall_s"]
    return result


def show(label: str, r: dict) -> None:
    print(
        f"{label:<42} {r['requests']:>9,} req in {r['wall_s']:7.1f} s wall: "
        f"{r['requests_per_wall_s']:>9,.0f} req/s ({r['requests_per_cpu_s']:,.0f} per CPU-s), "
        f"{r['tokens_per_wall_s']:>12,.0f} tok/s, "
        f"{r['steps'] / r['requests']:6.1f} steps/req, peak RSS {r['peak_rss_bytes'] / 1e6:,.0f} MB"
    )


def show_floor(label: str, f: dict) -> None:
    print(
        f"{label:<42} {f['requests']:>9,} req in {f['wall_s']:7.2f} s wall: "
        f"{f['requests_per_wall_s']:>9,.0f} req/s, {f['events_per_wall_s']:,.0f} events/s "
        f"(3 heap events per request)"
    )


def fastest(runs: list[dict]) -> dict:
    """The fastest run (on a shared host, the one least slowed by others), with every wall."""
    best = dict(min(runs, key=lambda r: r["wall_s"]))
    best["wall_s_runs"] = [r["wall_s"] for r in runs]
    return best


def floor_ratios(replays: list[dict], floors: list[dict]) -> dict:
    """x the floor: fastest replay / fastest floor, each interleaved pair's ratio, and the
    ratio of the least CPU times."""
    pairs = [r["wall_s"] / f["wall_s"] for r, f in zip(replays, floors, strict=True)]
    best = min(r["wall_s"] for r in replays) / min(f["wall_s"] for f in floors)
    cpu = min(r["cpu_s"] for r in replays) / min(f["cpu_s"] for f in floors)
    return {"x_floor": best, "x_floor_pairs": pairs, "x_floor_cpu": cpu}


def show_x_floor(label: str, ratios: dict) -> None:
    pairs = ", ".join(f"{x:.1f}" for x in ratios["x_floor_pairs"])
    print(
        f"  {label}: {ratios['x_floor']:.1f}x the floor (fastest/fastest wall; pairs: {pairs}; "
        f"CPU: {ratios['x_floor_cpu']:.1f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument(
        "--replicas",
        type=replica_counts,
        default=[64],
        help="replicas; several (64,512,4096) compare the cost per request across fleet sizes",
    )
    parser.add_argument("--gpu", default="h100-sxm")
    parser.add_argument("--load", type=float, default=1.0, help="x the auto-sizing rate")
    parser.add_argument("--slice", type=int, default=100_000, help="requests for comparisons")
    parser.add_argument(
        "--baseline", type=Path, help="another tokenfleet checkout to run each case with too"
    )
    parser.add_argument("--balancer", default="least-requests", help="the fleet's balancer")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of the main case; the fastest is reported"
    )
    parser.add_argument("--json", action="store_true", help="also print all figures as JSON")
    parser.add_argument(
        "--peer", choices=["splitwise"], help="only compare with another simulator (not in CI)"
    )
    parser.add_argument("--peer-dir", type=Path, help="a SplitwiseSim checkout")
    parser.add_argument(
        "--peer-python", type=Path, help="SplitwiseSim's venv python (default: this one)"
    )
    parser.add_argument("--peer-requests", type=int, default=20_000)
    parser.add_argument("--peer-machines", type=int, default=16, help="DGX machines (replicas)")
    parser.add_argument("--peer-gpu", choices=sorted(PEER_GPUS), default="a100")
    args = parser.parse_args()
    if not AZURE_CONV.exists():
        sys.exit(f"error: {AZURE_CONV} not found; put ../shared beside the checkout")
    if args.baseline is not None and not (args.baseline / "tokenfleet").is_dir():
        sys.exit(f"error: {args.baseline} holds no tokenfleet package; give a checkout's root")
    if args.repeat < 1:
        sys.exit("error: --repeat must be at least 1")
    print_host()
    if args.peer:
        results = peer_splitwise(args)
    elif len(args.replicas) > 1:
        results = scaling(args)
    else:
        args.replicas = args.replicas[0]
        results = bench(args)
    if args.json:
        print(json.dumps(results, indent=2))


def replica_counts(text: str) -> list[int]:
    """`--replicas 64` or `--replicas 64,512,4096`."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError("every replica count must be at least 1")
    return counts


def scaling(args: argparse.Namespace) -> dict:
    """The cost per request across fleet sizes: the same number of requests at a rate scaled
    with the fleet (each fleet equally loaded), runs interleaved (64, 512, 4096, 64, ...) so the
    host's drift falls on every size alike; the fastest of --repeat runs per size."""
    results: dict = {}
    roots = [("this checkout", ROOT)]
    if args.baseline is not None:
        roots.append(("baseline", args.baseline))
    with tempfile.TemporaryDirectory() as tmp:
        traces = {}
        for n in args.replicas:
            rate = fleet_rate(args.gpu, n, 1) * args.load
            traces[n] = Path(tmp) / f"r{n}.parquet"
            tiled_trace(traces[n], args.requests, rate, 1)
            print(
                f"{n:>6} x {args.gpu}: Azure conv tiled to {args.requests:,} requests at "
                f"{rate:,.0f} req/s, Llama-3.1-8B, vllm, {args.balancer}"
            )
        runs: dict = {(name, n): [] for name, _ in roots for n in args.replicas}
        for _ in range(args.repeat):
            for n in args.replicas:
                for name, root in roots:
                    runs[name, n].append(
                        measure(traces[n], args.gpu, n, False, root, args.balancer)
                    )
    first = args.replicas[0]
    for name, _ in roots:
        print(f"{name}:")
        base = fastest(runs[name, first])
        for n in args.replicas:
            r = fastest(runs[name, n])
            results[f"{name}/{n}"] = r
            walls = ", ".join(f"{w:.1f}" for w in r["wall_s_runs"])
            print(
                f"  {n:>6} replicas: {r['wall_s'] / r['requests'] * 1e6:6.1f} us/request wall "
                f"({r['cpu_s'] / r['requests'] * 1e6:6.1f} CPU), "
                f"{r['wall_s'] / base['wall_s']:.2f}x the cost at {first} "
                f"({r['cpu_s'] / base['cpu_s']:.2f}x CPU); {r['requests_per_wall_s']:,.0f} "
                f"req/s, peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB, TTFT p50 "
                f"{r['ttft_p50_s'] * 1e3:.0f} ms; wall s of {args.repeat} runs: {walls}"
            )
    if args.baseline is not None:
        for n in args.replicas:
            b, r = results[f"baseline/{n}"], results[f"this checkout/{n}"]
            print(f"  speed-up vs baseline at {n:>6}: {b['wall_s'] / r['wall_s']:.2f}x wall")
    return results


def print_host() -> None:
    """The interpreter and the CPU, which the absolute figures depend on."""
    # The interpreter's build matters: CPython built without PGO/LTO, or as a shared
    # library, runs this pure-Python event loop 15-20% slower than a distribution's build.
    print(f"Python {sys.version.splitlines()[0]} at {sys.executable}")
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    print(f"Host: {cpu}, {os.cpu_count()} CPUs")


def bench(args: argparse.Namespace) -> dict:
    """The main case (with the floor interleaved), the slices, and their ratios."""
    results: dict = {}

    def case(key: str, label: str, trace: Path, step_by_step: bool = False) -> dict:
        """One run of a comparison case (and of the baseline's, right after)."""
        r = measure(trace, args.gpu, args.replicas, step_by_step, ROOT, args.balancer)
        results[key] = r
        show(label, r)
        if args.baseline is not None:
            b = measure(trace, args.gpu, args.replicas, step_by_step, args.baseline, args.balancer)
            results[key + "_baseline"] = b
            show("  baseline", b)
            print(
                f"  speed-up vs baseline: {b['wall_s'] / r['wall_s']:.2f}x wall, "
                f"{b['cpu_s'] / r['cpu_s']:.2f}x CPU"
            )
        return r

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rate = fleet_rate(args.gpu, args.replicas, 1) * args.load
        rate10 = fleet_rate(args.gpu, args.replicas, 10) * args.load
        print(
            f"Azure conv tiled, Llama-3.1-8B on {args.replicas} x {args.gpu}, vllm, "
            f"{args.balancer}; {rate:,.0f} req/s (outputs x10: {rate10:,.0f} req/s)"
        )
        main_trace = tmp / "main.parquet"
        tiled_trace(main_trace, args.requests, rate, 1)
        # main case: replay, floor, [baseline,] replay, floor, ... (drift falls on all alike)
        mains, floors, bases = [], [], []
        for _ in range(args.repeat):
            mains.append(measure(main_trace, args.gpu, args.replicas, False, ROOT, args.balancer))
            floors.append(measure_floor(main_trace))
            if args.baseline is not None:
                bases.append(
                    measure(
                        main_trace, args.gpu, args.replicas, False, args.baseline, args.balancer
                    )
                )
        results["main"] = r = fastest(mains)
        results["floor"] = f = fastest(floors)
        results["main"].update(floor_ratios(mains, floors))
        show("main", r)
        if args.repeat > 1:
            walls = ", ".join(f"{w:.1f}" for w in r["wall_s_runs"])
            print(f"  best of {args.repeat} runs (wall s: {walls})")
        show_floor("floor (heapq, same requests)", f)
        if args.repeat > 1:
            walls = ", ".join(f"{w:.2f}" for w in f["wall_s_runs"])
            print(f"  best of {args.repeat} runs (wall s: {walls})")
        show_x_floor("this checkout", results["main"])
        if bases:
            results["main_baseline"] = b = fastest(bases)
            b.update(floor_ratios(bases, floors))
            show("  baseline", b)
            show_x_floor("baseline", b)
            print(
                f"  speed-up vs baseline: {b['wall_s'] / r['wall_s']:.2f}x wall, "
                f"{b['cpu_s'] / r['cpu_s']:.2f}x CPU"
            )
        tiled_trace(tmp / "slice.parquet", args.slice, rate, 1)
        case("slice", "slice", tmp / "slice.parquet")
        case("slice_step_by_step", "slice --step-by-step", tmp / "slice.parquet", True)
        tiled_trace(tmp / "x10.parquet", args.slice, rate10, 10)
        case("slice_outputs_x10", "slice, outputs x10", tmp / "x10.parquet")
        small = args.slice // 5
        tiled_trace(tmp / "x10-small.parquet", small, rate10, 10)
        case("small_outputs_x10", "small slice, outputs x10", tmp / "x10-small.parquet")
        case(
            "small_outputs_x10_step_by_step",
            "small slice, outputs x10, --step-by-step",
            tmp / "x10-small.parquet",
            True,
        )
    for suffix, name in (("", "this checkout"), ("_baseline", "baseline")):
        if "main" + suffix not in results:
            continue
        fast, slow = results["slice" + suffix], results["slice_step_by_step" + suffix]
        fast10 = results["small_outputs_x10" + suffix]
        slow10 = results["small_outputs_x10_step_by_step" + suffix]
        x10 = results["slice_outputs_x10" + suffix]
        speedup = slow["wall_s"] / fast["wall_s"]
        speedup10 = slow10["wall_s"] / fast10["wall_s"]
        flat = (x10["cpu_s"] / x10["requests"]) / (fast["cpu_s"] / fast["requests"])
        print(f"{name}:")
        print(
            f"  skip vs --step-by-step: {speedup:.1f}x faster ({speedup10:.1f}x with outputs x10)"
        )
        print(f"  CPU cost per request, outputs x10 vs x1: {flat:.2f}x (target <= 1.5x)")
        main_run = results["main" + suffix]
        print(
            f"  on this host: {main_run['requests_per_wall_s']:,.0f} req/s "
            f"({main_run['requests_per_cpu_s']:,.0f} per CPU-s), "
            f"{main_run['x_floor']:.1f}x the floor; "
            f"peak RSS < 1 GB: {main_run['peak_rss_bytes'] / 1e9:.2f} GB"
        )
        results["speedup_vs_step_by_step" + suffix] = speedup
        results["speedup_vs_step_by_step_outputs_x10" + suffix] = speedup10
        results["x10_cost_ratio" + suffix] = flat
    return results


def peer_splitwise(args: argparse.Namespace) -> dict:
    """tokenfleet, the floor and SplitwiseSim on one trace, interleaved; their ratios."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import peer_splitwise as peer

    if args.peer_dir is None or not (args.peer_dir / "run.py").is_file():
        sys.exit("error: --peer splitwise needs --peer-dir, a SplitwiseSim checkout (run.py)")
    peer_python = args.peer_python or Path(sys.executable)
    sku, gpu = PEER_GPUS[args.peer_gpu]
    machines = args.peer_machines
    engine, max_seqs, max_tokens = "vllm-v0-2023", peer.MAX_BATCH_SIZE, peer.MAX_BATCH_TOKENS
    rate = args.load * fleet_rate(
        gpu, machines, 1, PEER_MODEL[1], peer.TENSOR_PARALLEL, "fp16", engine, max_seqs
    )
    print(
        f"Azure conv tiled to {args.peer_requests:,} requests at {rate:,.1f} req/s; "
        f"Llama-2-70B fp16 on {machines} x {sku} (tp {peer.TENSOR_PARALLEL}), "
        f"<= {max_seqs} seqs and {max_tokens:,} tokens per step"
    )
    results: dict = {"peer": "splitwise", "machines": machines, "rate_per_s": rate}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trace = tmp / "peer.parquet"
        table = tiled_trace(trace, args.peer_requests, rate, 1)
        csv_trace = tmp / "traces" / "peer.csv"
        csv_trace.parent.mkdir()
        peer.write_trace_csv(
            csv_trace,
            table.column("arrival_s").to_numpy(),
            table.column("prompt_tokens").to_numpy(),
            table.column("output_tokens").to_numpy(),
        )
        scenario = tmp / "peer.toml"
        scenario.write_text(
            f'seed = 0\n[model]\nname = "{PEER_MODEL[1]}"\ndtype = "fp16"\n'
            f'[balancer]\npolicy = "least-tokens"\n'
            f'[[pools]]\nname = "default"\ngpu = "{gpu}"\ntp = {peer.TENSOR_PARALLEL}\n'
            f'replicas = {machines}\nengine = "{engine}"\n'
            f'[pools.batcher]\npolicy = "vllm"\nmax_num_seqs = {max_seqs}\n'
            f"max_num_batched_tokens = {max_tokens}\n"
        )
        ours, floors, theirs = [], [], []
        for k in range(args.repeat):  # tokenfleet, floor, SplitwiseSim, tokenfleet, ...
            ours.append(measure(trace, gpu, machines, scenario=scenario))
            floors.append(measure_floor(trace, FLOOR_TIMES["peer"]))
            out = tmp / f"splitwise-{k}"
            out.mkdir()
            theirs.append(peer.run_peer(args.peer_dir, peer_python, csv_trace, out, machines, sku))
            theirs[-1]["wall_s"] = theirs[-1]["run_simulation_s"]
            theirs[-1]["cpu_s"] = theirs[-1]["run_simulation_cpu_s"]
    r, f = fastest(ours), fastest(floors)
    s = fastest(theirs)
    r.update(floor_ratios(ours, floors))
    s.update(floor_ratios(theirs, floors))
    results.update({"tokenfleet": r, "floor": f, "splitwise": s})
    show("tokenfleet", r)
    print(
        f"  TTFT p50 {r['ttft_p50_s']:.3f} s, p99 {r['ttft_p99_s']:.3f} s; TPOT p50 "
        f"{r['tpot_p50_s'] * 1e3:.1f} ms; mean batch {r['mean_batch']:.1f}; "
        f"{r['finished']:,} finished"
    )
    print(
        f"{'SplitwiseSim':<42} {args.peer_requests:>9,} req in {s['wall_s']:7.1f} s wall: "
        f"{args.peer_requests / s['wall_s']:>9,.0f} req/s "
        f"(trace load {s['trace_load_s']:.1f} s, loop {s['loop_s']:.1f} s, "
        f"writing {s['save_results_s']:.1f} s; process {s['process_s']:.1f} s with "
        f"{s['import_s']:.1f} s of imports)"
    )
    print(
        f"  TTFT p50 {s['ttft_times_p50']:.3f} s, p99 {s['ttft_times_p99']:.3f} s; TBT p50 "
        f"{s['tbt_times_p50'] * 1e3:.1f} ms; {s['completed']:,} completed; Python "
        f"{s['python'].split()[0]}"
    )
    show_floor("floor (heapq, same requests)", f)
    ratio = r["wall_s"] / s["wall_s"]
    pairs = ", ".join(f"{a['wall_s'] / b['wall_s']:.3f}" for a, b in zip(ours, theirs, strict=True))
    results["x_splitwise"] = ratio
    print(
        f"  tokenfleet: {ratio:.3f}x SplitwiseSim's wall time (fastest/fastest; pairs: {pairs}); "
        f"SplitwiseSim takes {1 / ratio:.0f}x as long"
    )
    loop_ratio = r["wall_s"] / s["loop_s"]
    print(f"  tokenfleet whole run against SplitwiseSim's event loop alone: {loop_ratio:.3f}x")
    show_x_floor("tokenfleet", r)
    show_x_floor("SplitwiseSim", s)
    print("  differences between the two configurations:")
    for line in PEER_DIFFERENCES:
        print(f"  - {line}")
    return results


if __name__ == "__main__":
    main()
