"""Instructions one replay executes, this checkout against another (a script, not a test; prints
figures).

On a shared host the wall time of the same run moves by 20% from one minute to the next, so a
few-percent change in the simulator's cost cannot be seen in `bench_replay.py --baseline`.
The count of machine instructions can: Valgrind's callgrind counts them, deterministically
(two runs of one checkout agree to 0.01%), with collection switched on only around
`run_replay` (reading the trace, simulating, writing the records), so interpreter start-up
and imports are left out. It is not the time (a cache miss costs more than an add), but for
a change in pure-Python code it is the steadiest proxy there is; it runs about 50x slower
than the replay itself, so the traces are small.

Cases, each run with this checkout and with `--baseline DIR`, side by side in two processes:

- `azure`: the Azure conv trace tiled to --requests (20,000) on 64 replicas at the sizing rate
  (bench_replay.py's main case, shortened);
- `mooncake`: the Mooncake synthetic trace tiled to --requests, re-keyed, on 16 replicas with
  cache-aware routing (bench_prefix.py's case, shortened).

    python scripts/count_instructions.py --baseline DIR [--requests 20000] [--case azure]

Needs `valgrind` (Debian: apt-get install valgrind); not run in CI.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replay import ROOT, fleet_rate, tiled_trace  # noqa: E402

# The child: import the checkout's package, switch collection on, replay, switch it off.
CHILD = """
import os, subprocess, sys, tempfile
from pathlib import Path
root, trace, scenario = sys.argv[1:4]
sys.path.insert(0, root)
from tokenfleet.replay.run import run_replay
from tokenfleet.replay.scenario import load_scenario
assert Path(__import__("tokenfleet").__file__).is_relative_to(root)
scenario = load_scenario(scenario)
def collect(on):
    subprocess.run(["callgrind_control", "-i", on, str(os.getpid())], capture_output=True)
with tempfile.TemporaryDirectory() as out:
    collect("on")
    run_replay(trace, scenario, Path(out) / "run")
    collect("off")
"""


def count(root: Path, trace: Path, scenario: Path, tmp: Path) -> int:
    """Instructions executed by one replay of `trace` with `root`'s package."""
    out = tmp / f"callgrind.{os.getpid()}.{abs(hash((root, trace)))}"
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         sys.executable, "-c", CHILD, str(root), str(trace), str(scenario)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode or not found:
        sys.exit(f"error: the replay under valgrind failed:\n{result.stderr[-2000:]}")
    return int(found.group(1))


def cases(args, tmp: Path) -> dict[str, tuple[Path, Path]]:
    """(trace, scenario) per case."""
    made = {}
    if args.case in ("azure", "all"):
        trace = tmp / "azure.parquet"
        tiled_trace(trace, args.requests, fleet_rate("h100-sxm", 64, 1), 1)
        scenario = tmp / "azure.toml"
        scenario.write_text('[balancer]\npolicy = "least-requests"\n\n[[pools]]\nreplicas = 64\n')
        made["azure"] = (trace, scenario)
    if args.case in ("mooncake", "all"):
        from bench_prefix import mooncake_rate, mooncake_trace, scenario_file

        trace = tmp / "mooncake.parquet"
        mooncake_trace(trace, args.requests, True, 1, mooncake_rate(16, 1))
        made["mooncake"] = (trace, scenario_file(tmp, "mooncake", 16, "cache-aware", True))
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--case", choices=("azure", "mooncake", "all"), default="all")
    args = parser.parse_args()
    if not (args.baseline / "tokenfleet").is_dir():
        sys.exit(f"error: {args.baseline} holds no tokenfleet package; give a checkout's root")
    if shutil.which("valgrind") is None:
        sys.exit("error: valgrind not found; install it (apt-get install valgrind)")
    print(f"Python {sys.version.split()[0]} at {sys.executable}; callgrind instruction counts")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, (trace, scenario) in cases(args, tmp).items():
            with ThreadPoolExecutor(max_workers=2) as pool:
                mine = pool.submit(count, ROOT, trace, scenario, tmp)
                theirs = pool.submit(count, args.baseline, trace, scenario, tmp)
                a, b = mine.result(), theirs.result()
            print(
                f"{name:<9} {args.requests:,} requests: this {a:,} ({a / args.requests:,.0f} per "
                f"request), baseline {b:,}: {a / b:.4f}x the baseline's instructions"
            )


if __name__ == "__main__":
    main()
