"""Run SplitwiseSim (github.com/Mutinifni/splitwise-sim) on a trace and time it.

A helper of `bench_replay.py --peer splitwise`, in two halves:

- imported by bench_replay.py (tokenfleet's venv): `write_trace_csv` turns a trace's arrays into
  the CSV SplitwiseSim reads (`traces/*.csv`: request_id, request_type, application_id,
  arrival_timestamp, batch_size, prompt_size, token_size), and `run_peer` runs this file under
  SplitwiseSim's interpreter and returns its timings;
- run as a script under SplitwiseSim's own venv (stdlib imports only): it imports SplitwiseSim's
  `run.py` from `--peer-dir`, wraps its stages with timers, runs it once through Hydra with the
  overrides below, and writes the timings as JSON.

SplitwiseSim's config always selects Hydra's Ray launcher (`override hydra/launcher: ray` and a
`hydra.launcher.ray` block); a single run does not need Ray, so a copy of `configs/config.yaml`
without those lines is written to a temporary config dir (`--config-dir`) and used instead. The
checkout itself is not changed.

Setup (once, outside the tokenfleet checkout; CPython 3.11 as SplitwiseSim is tested with):

    git clone https://github.com/Mutinifni/splitwise-sim /work/peer/splitwise-sim
    python3.11 -m venv /work/peer-venv
    /work/peer-venv/bin/pip install hydra-core==1.3.2 omegaconf==2.3.0 numpy==1.25.2 \\
        pandas==2.0.3 scipy==1.11.3 networkx==3.1

(the subset of its requirements.txt that a simulation imports; Ray, the plotting and notebook
packages are not needed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The SplitwiseSim configuration the peer mode runs: its "Baseline" (one model instance per DGX
# machine, tensor parallelism 8, mixed prompt/token batching with preemption, at most 512
# sequences and 2,048 batch tokens per iteration), the profiled performance model, and the
# token_jsq scheduler its Baseline scripts use (scripts/run_baseline_h.sh).
MODELS = {"llama2-70b": "llama2-70b-fp16", "bloom-176b": "bloom-176b-fp16"}
SKUS = ("dgx-a100", "dgx-h100")  # the order of cluster=half_half's servers
SCHEDULER = "token_jsq"
MAX_BATCH_SIZE = 512
MAX_BATCH_TOKENS = 2048
TENSOR_PARALLEL = 8
ARRIVAL_SHIFT_S = 0.001


def write_trace_csv(path: Path, arrivals, prompts, outputs) -> None:
    """Write a trace (arrival seconds, prompt and output tokens) as a SplitwiseSim trace CSV.

    SplitwiseSim makes a request's token task `token_size - 1` tokens long (the first output
    token comes out of the prompt task), so a request needs token_size >= 1. Every arrival is
    shifted by ARRIVAL_SHIFT_S: SplitwiseSim runs an event scheduled with delay 0 at once, and
    it schedules the arrivals before it builds the instances, so a request arriving at 0 s
    finds none ("No instances available").
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    n = len(arrivals)
    if n and int(np.min(outputs)) < 1:
        raise ValueError("SplitwiseSim needs at least one output token per request")
    table = pa.table(
        {
            "request_id": np.arange(n, dtype=np.int64),
            "request_type": np.full(n, 2, dtype=np.int8),  # 2 = generative LLM inference
            "application_id": np.zeros(n, dtype=np.int8),
            "arrival_timestamp": np.asarray(arrivals, dtype=np.float64) + ARRIVAL_SHIFT_S,
            "batch_size": np.ones(n, dtype=np.int8),
            "prompt_size": np.asarray(prompts, dtype=np.int64),
            "token_size": np.asarray(outputs, dtype=np.int64),
        }
    )
    pcsv.write_csv(table, path, pcsv.WriteOptions(quoting_style="none"))


def overrides(
    trace_csv: Path, out_dir: Path, machines: int, sku: str, model: str, end_time: float
) -> list[str]:
    """The Hydra command-line overrides of one SplitwiseSim run."""
    counts = [machines if s == sku else 0 for s in SKUS]
    return [
        "cluster=half_half",
        f"cluster.servers.0.count={counts[0]}",
        f"cluster.servers.1.count={counts[1]}",
        "start_state=baseline",
        f"start_state.instance.max_batch_size={MAX_BATCH_SIZE}",
        f"start_state.instance.max_batch_tokens={MAX_BATCH_TOKENS}",
        f"start_state.instance.tensor_parallelism={TENSOR_PARALLEL}",
        "performance_model=db",
        f"applications.0.scheduler={SCHEDULER}",
        f"applications.0.model_architecture={model}",
        f"applications.0.model_size={MODELS[model]}",
        f"trace.dir={trace_csv.parent}",
        f"trace.filename={trace_csv.stem}",
        f"end_time={end_time}",
        "debug=False",
        "seed=0",
        f"hydra.run.dir={out_dir}",
    ]


def run_peer(
    peer_dir: Path,
    peer_python: Path,
    trace_csv: Path,
    out_dir: Path,
    machines: int,
    sku: str = "dgx-h100",
    model: str = "llama2-70b",
    end_time: float = 1e9,
    timeout_s: float = 3600.0,
) -> dict:
    """Run SplitwiseSim once in its own interpreter; its stage timings and a few results."""
    result = out_dir / "timings.json"
    cmd = [
        str(peer_python),
        str(Path(__file__).resolve()),
        "--peer-dir",
        str(peer_dir),
        "--result",
        str(result),
        "--",
        *overrides(trace_csv, out_dir / "run", machines, sku, model, end_time),
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    process_s = time.perf_counter() - start
    if proc.returncode != 0 or not result.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise RuntimeError(
            f"SplitwiseSim exited with {proc.returncode}:\n" + "\n".join("  " + t for t in tail)
        )
    timings = json.loads(result.read_text())
    timings["process_s"] = process_s
    timings.update(_results(out_dir / "run"))
    return timings


def _results(run_dir: Path) -> dict:
    """Completed requests and latency figures from SplitwiseSim's outputs (csv, no pandas)."""
    import csv

    with open(run_dir / "detailed" / "0.csv", newline="") as f:
        completed = sum(1 for _ in f) - 1
    with open(run_dir / "summary.csv", newline="") as f:
        row = next(csv.DictReader(f))
    keys = ("ttft_times_p50", "ttft_times_p99", "tbt_times_p50", "response_times_p50")
    return {"completed": completed, **{k: float(row[k]) for k in keys}}


def _peer_config_dir(peer_dir: Path, into: Path) -> str:
    """A copy of SplitwiseSim's config.yaml without the Ray launcher; returns its name."""
    text = (peer_dir / "configs" / "config.yaml").read_text()
    text = re.sub(r"^\s*- override hydra/launcher: ray\s*$\n", "", text, flags=re.M)
    text = re.sub(r"^  launcher:\n(?:    .*\n?)*", "", text, flags=re.M)
    (into / "tokenfleet_peer.yaml").write_text(text)
    return "tokenfleet_peer"


def _main() -> None:
    """Script half (SplitwiseSim's venv): run its run.py once with timers around each stage."""
    argv = sys.argv[1:]
    split = argv.index("--")
    own, hydra_overrides = argv[:split], argv[split + 1 :]
    opts = dict(zip(own[::2], own[1::2], strict=True))
    peer_dir = Path(opts["--peer-dir"]).resolve()
    result = Path(opts["--result"]).resolve()
    os.chdir(peer_dir)
    sys.path.insert(0, str(peer_dir))
    sys.modules.pop("trace", None)  # SplitwiseSim has its own trace.py
    stamps: dict[str, float] = {}
    start = time.perf_counter()
    import hydra
    import run as peer_run  # SplitwiseSim's run.py
    import simulator

    stamps["import_s"] = time.perf_counter() - start

    def timed(fn, key: str):
        def wrapper(*a, **k):
            t, cpu = time.perf_counter(), time.process_time()
            out = fn(*a, **k)
            stamps[key] = stamps.get(key, 0.0) + time.perf_counter() - t
            cpu_key = key.removesuffix("_s") + "_cpu_s"
            stamps[cpu_key] = stamps.get(cpu_key, 0.0) + time.process_time() - cpu
            return out

        return wrapper

    peer_run.init_trace = timed(peer_run.init_trace, "trace_load_s")
    peer_run.run_simulation = timed(peer_run.run_simulation, "run_simulation_s")
    simulator.TraceSimulator.run = timed(simulator.TraceSimulator.run, "simulate_and_save_s")
    simulator.TraceSimulator.save_results = timed(
        simulator.TraceSimulator.save_results, "save_results_s"
    )
    with tempfile.TemporaryDirectory() as cfg:
        name = _peer_config_dir(peer_dir, Path(cfg))
        # run.run's own body under Hydra, with its config path made absolute (Hydra resolves a
        # relative one against the calling module, which is this file, not run.py)
        task = hydra.main(str(peer_dir / "configs"), "config", version_base=None)(
            peer_run.run.__wrapped__
        )
        sys.argv = ["run.py", "--config-dir", cfg, "--config-name", name, *hydra_overrides]
        task()
    stamps["loop_s"] = stamps["simulate_and_save_s"] - stamps["save_results_s"]
    stamps["python"] = sys.version
    result.write_text(json.dumps(stamps))


if __name__ == "__main__":
    _main()
