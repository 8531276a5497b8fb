"""Do two checkouts write the same records? (a script, not a test; prints hashes).

A refactor of the simulator must not change what it writes. This replays two traces with the
package of this checkout and of `--baseline DIR` (another checkout, e.g.
`git worktree add /tmp/base HEAD~3`), each in the normal and the --step-by-step mode, and
compares the sha256 of requests.parquet and timeline.parquet, and summary.json as data:

- the Azure 2023 conversation trace (../shared/data) on the default fleet: the pass-through
  gateway;
- a synthetic trace of 150,000 requests (seed 5) with 5 tenants and 3 tiers through the
  scenario `scripts/check_records.toml`: rate limits with client retries, a deferred tier that
  partly expires, tier routing, priorities, gateway latency, and an autoscaled on-demand pool
  billed per minute next to an owned one;
- the Mooncake synthetic trace (its prefix hashes) and a synthetic chat trace of 40,000
  requests (seed 7: 12 shared system prompts, conversations of 1 to 6 turns) through
  `scripts/check_records_prefix.toml`: vLLM's prefix cache on 3 replicas behind the cache-aware
  router, with hits, evictions and preemptions.

    python scripts/check_records.py --baseline DIR [--ignore-summary-key pools.timeline_cost_usd]
    python scripts/check_records.py --baseline DIR --simulation-only

Exit code 1 if any file differs. `--ignore-summary-key` drops a (dotted) key from both
summaries before comparing them, for a change that removes a figure on purpose.
`--simulation-only` is for a change to billing or reporting that must leave the simulation
alone: it compares, instead of whole files, the columns that record what the fleet did (each
request's times, replica, status, preemptions, attempts and GPU time; each timeline row's
steps, batches, tokens, busy time and KV peak), and no summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scripts" / "check_records.toml"
PREFIX_SCENARIO = ROOT / "scripts" / "check_records_prefix.toml"
AZURE_CONV = ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
MOONCAKE = ROOT.parent / "shared" / "data" / "traces" / "mooncake_synthetic_trace.jsonl"
TENANTS = "acme=0.4,globex=0.25,initech=0.15,umbrella=0.12,hooli=0.08"
TIERS = "fast=0.2,standard=0.6,batch=0.2"


def tokenfleet(checkout: Path, *args: str) -> None:
    """Run the CLI with `checkout`'s package first on the path."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    subprocess.run(
        [sys.executable, "-m", "tokenfleet", *args, "--quiet"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        cwd=tempfile.gettempdir(),
    )


def make_traces(tmp: Path) -> dict[str, tuple[Path, Path | None]]:
    conv, synth = tmp / "conv.parquet", tmp / "tiers.parquet"
    tokenfleet(ROOT, "traces", "convert", str(AZURE_CONV), str(conv))
    tokenfleet(
        ROOT, "traces", "synth", str(synth), "--requests", "150000", "--rate", "60",
        "--seed", "5", "--tenants", TENANTS, "--tiers", TIERS,
    )  # fmt: skip
    moon, chat = tmp / "mooncake.parquet", tmp / "chat.parquet"
    tokenfleet(ROOT, "traces", "convert", str(MOONCAKE), str(moon))
    tokenfleet(
        ROOT, "traces", "synth", str(chat), "--requests", "40000", "--rate", "10", "--seed", "7",
        "--system-prompts", "12", "--system-prompt-tokens", "1024", "--prefix-zipf", "1.1",
        "--turns", "uniform:1,6", "--think-time-s", "exponential:30",
    )  # fmt: skip
    return {
        "azure-conv": (conv, None),
        "tiers-150k": (synth, SCENARIO),
        "mooncake": (moon, PREFIX_SCENARIO),
        "chat-40k": (chat, PREFIX_SCENARIO),
    }


def replay(checkout: Path, trace: Path, scenario: Path | None, sbs: bool, out: Path) -> Path:
    args = ["replay", str(trace), "--out", str(out)]
    args += ["--scenario", str(scenario)] if scenario else []
    args += ["--step-by-step"] if sbs else []
    tokenfleet(checkout, *args)
    return out


# What the fleet did, in columns every version since the restructuring writes.
SIMULATION_COLUMNS = {
    "requests.parquet": [
        "request_id", "replica", "arrival_s", "start_s", "first_token_s", "finish_s",
        "preemptions", "status", "attempts", "gpu_s", "prefill_gpu_s",
    ],
    "timeline.parquet": [
        "pool", "replica", "interval_start_s", "busy_s", "steps", "mean_batch", "max_batch",
        "prefill_tokens", "decode_tokens", "output_tokens", "kv_peak_blocks",
        "requests_arrived", "requests_finished",
    ],
}  # fmt: skip


def digest(path: Path, simulation_only: bool = False) -> str:
    """sha256 of the file, or of its simulation columns (their Arrow IPC bytes, no metadata)."""
    if not simulation_only:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=SIMULATION_COLUMNS[path.name]).replace_schema_metadata()
    table = table.cast(pa.schema([f.with_type(_plain(f.type)) for f in table.schema]))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]


def _plain(kind):
    """Dictionary-encoded strings as plain strings (the encoding is not what was simulated)."""
    import pyarrow as pa

    return kind.value_type if pa.types.is_dictionary(kind) else kind


def summary_of(out: Path, ignored: list[str]) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    for dotted in ignored:
        _drop(summary, dotted.split("."))
    return summary


def _drop(node, keys: list[str]) -> None:
    """Remove the dotted key from a summary; lists apply it to every item."""
    if isinstance(node, list):
        for item in node:
            _drop(item, keys)
    elif isinstance(node, dict):
        if len(keys) == 1:
            node.pop(keys[0], None)
        elif keys[0] in node:
            _drop(node[keys[0]], keys[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout")
    parser.add_argument("--ignore-summary-key", action="append", default=[], metavar="KEY")
    parser.add_argument("--simulation-only", action="store_true", help="see the docstring")
    args = parser.parse_args()
    if not (args.baseline / "tokenfleet").is_dir():
        sys.exit(f"error: {args.baseline} holds no tokenfleet package; give a checkout's root")
    if not AZURE_CONV.exists():
        sys.exit(f"error: {AZURE_CONV} not found; put ../shared beside the checkout")
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = [
            (name, trace, scenario, sbs)
            for name, (trace, scenario) in make_traces(tmp).items()
            for sbs in (False, True)
        ]
        jobs = {}
        with ThreadPoolExecutor(max_workers=2) as pool:
            for name, trace, scenario, sbs in cases:
                for side, checkout in (("this", ROOT), ("baseline", args.baseline)):
                    out = tmp / f"{name}-{sbs}-{side}"
                    jobs[name, sbs, side] = pool.submit(replay, checkout, trace, scenario, sbs, out)
        for name, _, _, sbs in cases:
            mine, theirs = jobs[name, sbs, "this"].result(), jobs[name, sbs, "baseline"].result()
            label = f"{name}{' --step-by-step' if sbs else ''}"
            for file in ("requests.parquet", "timeline.parquet"):
                a = digest(mine / file, args.simulation_only)
                b = digest(theirs / file, args.simulation_only)
                same &= a == b
                print(f"{label:<32} {file:<18} {a} {'==' if a == b else '!='} {b}")
            if args.simulation_only:
                continue
            equal = summary_of(mine, args.ignore_summary_key) == summary_of(
                theirs, args.ignore_summary_key
            )
            same &= equal
            print(f"{label:<32} {'summary.json':<18} {'same' if equal else 'DIFFERENT'}")
    print("records identical" if same else "records DIFFER")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
