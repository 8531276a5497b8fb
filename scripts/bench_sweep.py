"""Speed of `tokenfleet sweep` on Ray against local processes (a script, not a test; prints
figures).

A 48-cell grid (max_num_seqs 16..512 x replicas 1, 2, 4, 8 x two balancers) over
one synthetic trace of 10,000 requests, swept four ways in one invocation, each into a fresh
output directory and in its own `tokenfleet` process (so Ray's start-up and shutdown are in
its figure): --executor local and --executor ray, each with --jobs 1 and --jobs 2. Printed:
each wall time, Ray's over local's at the same jobs (its overhead; target <= 1.2x at 2), and
each executor's speed-up from 1 to 2 CPUs. The tables the four write are checked equal.
A local Ray's start-up and shutdown alone is timed apart too: the fixed cost in Ray's figure.
Last, Ray as a cluster is used: a head of 2 CPUs started once (`ray start --head`, outside the
figure), and the sweep sent to it with --address, so that figure is Ray's per-task overhead.
(Ray 2.5x turns token authentication on for a head it starts; the script turns it off for its
own head and client with RAY_AUTH_MODE=disabled.)

    python scripts/bench_sweep.py [--requests 10000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

GRID = """
traces = ["trace.parquet"]

[grid]
max_num_seqs = [16, 32, 64, 128, 256, 512]
replicas = [1, 2, 4, 8]
balancer = ["least-requests", "round-robin"]
"""


def sweep(folder: Path, name: str, executor: str, jobs: int, address: str = "") -> float:
    """One sweep in its own process; its wall seconds."""
    command = [sys.executable, "-m", "tokenfleet", "sweep", str(folder / "grid.toml")]
    command += ["--out", str(folder / name), "--executor", executor, "--jobs", str(jobs), "-q"]
    command += ["--address", address] if address else []
    start = time.perf_counter()
    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=RAY_ENV
    )
    return time.perf_counter() - start


RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # this script's own head and clients


def cluster_sweeps(folder: Path, repeat: int) -> list[float]:
    """The sweep sent `repeat` times to a Ray head of 2 CPUs started for them; its start and
    stop are not in the figures (a cluster is up before its users' jobs)."""
    ray = str(Path(sys.executable).with_name("ray"))
    port = "6393"
    head = [ray, "start", "--head", "--num-cpus", "2", "--port", port]
    head += ["--include-dashboard", "false", "--disable-usage-stats"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": RAY_ENV}
    subprocess.run(head, check=True, **quiet)
    try:
        return [sweep(folder, f"cluster-{r}", "ray", 2, f"127.0.0.1:{port}") for r in range(repeat)]
    finally:
        subprocess.run([ray, "stop", "--force"], **quiet)


RAY_START = """
import time, ray
start = time.perf_counter()
ray.init(num_cpus={jobs}, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
ray.get(ray.remote(lambda: None).remote())
ray.shutdown()
print(time.perf_counter() - start)
"""


def ray_start_s(jobs: int) -> float:
    """A local Ray's start, one trivial task and shutdown, in a fresh process: the fixed part
    of `--executor ray` that does not depend on the cells."""
    done = subprocess.run(
        [sys.executable, "-c", RAY_START.format(jobs=jobs)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the fastest is kept")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]} on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "tokenfleet", "traces", "synth", str(folder / "trace.parquet")]
            + ["--requests", str(args.requests), "--rate", "20", "--seed", "1"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (folder / "grid.toml").write_text(GRID)
        cases = [("local", 1), ("local", 2), ("ray", 1), ("ray", 2)]
        walls: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
        for r in range(args.repeat):  # interleaved: the host's drift falls on all alike
            for executor, jobs in cases:
                name = f"{executor}-{jobs}-{r}"
                walls[executor, jobs].append(sweep(folder, name, executor, jobs))
        best = {case: min(times) for case, times in walls.items()}
        for (executor, jobs), times in walls.items():
            runs = ", ".join(f"{t:.1f}" for t in times)
            print(f"{executor:>5} --jobs {jobs}: {best[executor, jobs]:6.1f} s for 48 cells "
                  f"({48 / best[executor, jobs]:.2f} cells/s; runs {runs})")  # fmt: skip
        for jobs in (1, 2):
            ratio = best["ray", jobs] / best["local", jobs]
            print(
                f"ray / local at --jobs {jobs}: {ratio:.2f}x" + (" (target <= 1.2x)" * (jobs == 2))
            )
        for executor in ("local", "ray"):
            print(f"{executor} speed-up 1 -> 2 CPUs: {best[executor, 1] / best[executor, 2]:.2f}x")
        fixed = min(ray_start_s(2) for _ in range(args.repeat))
        print(
            f"a local Ray's start, one task and shutdown alone: {fixed:.1f} s; without it, "
            f"ray / local at --jobs 2: {(best['ray', 2] - fixed) / best['local', 2]:.2f}x"
        )
        on_cluster = min(cluster_sweeps(folder, args.repeat))
        print(
            f"ray on a running 2-CPU cluster (--address): {on_cluster:.1f} s; ray / local at "
            f"--jobs 2: {on_cluster / best['local', 2]:.2f}x (target <= 1.2x)"
        )
        first = pl.read_parquet(folder / "local-1-0" / "sweep.parquet")
        for name in [f"{e}-{j}-0" for e, j in cases[1:]] + ["cluster-0"]:
            other = pl.read_parquet(folder / name / "sweep.parquet")
            assert_frame_equal(first.drop("trace"), other.drop("trace"))
        print("the five tables are equal")


if __name__ == "__main__":
    main()
