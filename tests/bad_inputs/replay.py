"""`tokenfleet replay`: bad traces, scenarios, flags and outputs."""

import io

import pyarrow as pa
import pyarrow.parquet as pq

from bad_inputs import case

R = "replay {trace}"
POOL = "[[pools]]\n"


def hashed_trace(hashes: list, block: bytes | None) -> bytes:
    """A two-request trace with prefix hashes, its footer block size `block` (None: absent)."""
    table = pa.table(
        {
            "arrival_s": [0.0, 1.0],
            "prompt_tokens": pa.array([1000, 40], pa.int32()),
            "output_tokens": pa.array([10, 10], pa.int32()),
            "prefix_hashes": pa.array(hashes, pa.list_(pa.int64())),
        }
    )
    if block is not None:
        table = table.replace_schema_metadata({b"tokenfleet.prefix_block_size": block})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def scenario(name: str, body: str, message: str):
    """A case replaying the kit's trace with the scenario `body`."""
    return case(
        f"replay: scenario {name}", f"{R} --scenario s.toml", message, files={"s.toml": body}
    )


CASES = [
    case("replay: missing trace", "replay missing.parquet", "missing.parquet: no such file"),
    case(
        "replay: a trace that is not Parquet",
        "replay bad.parquet",
        "bad.parquet: not a Parquet file",
        files={"bad.parquet": "garbage"},
    ),
    case("replay: a TOML given as the trace", "replay {scenario}", "not a Parquet file"),
    case("replay: a directory as the trace", "replay {run}", "run"),
    case(
        "replay: missing scenario", f"{R} --scenario missing.toml", "missing.toml: file not found"
    ),
    scenario("with zero replicas", POOL + "replicas = 0\n", "replicas = 0 must be >= 1"),
    scenario("with a text seed", 'seed = "x"\n', "seed = 'x' should be an integer like 0"),
    scenario("with an unknown key", "bogus = 1\n", "unknown key 'bogus'"),
    scenario("with an unknown gpu", POOL + 'gpu = "nope"\n', "unknown GPU 'nope'"),
    scenario(
        "with a model that does not fit",
        '[model]\nname = "llama-3.1-405b"\n' + POOL + "replicas = 1\n",
        "needs 756 GiB of weights; 1 x h100-sxm hold 80 GiB",
    ),
    scenario(
        "with an unknown pricing kind",
        POOL + '[pools.pricing]\nkind = "leased"\n',
        "kind = 'leased'; use 'rented' or 'owned'",
    ),
    scenario(
        "with a negative price",
        POOL + "[pools.pricing]\nusd_per_gpu_hour = -1.0\n",
        "usd_per_gpu_hour = -1.0 must be a finite number >= 0",
    ),
    scenario(
        "with a text price",
        POOL + '[pools.pricing]\nusd_per_gpu_hour = "cheap"\n',
        "usd_per_gpu_hour = 'cheap' should be a number like 2.95",
    ),
    scenario("that is not TOML", "not toml [[[", "not valid TOML"),
    scenario(
        "with a NaN price",
        POOL + "[pools.pricing]\nusd_per_gpu_hour = nan\n",
        "usd_per_gpu_hour = nan should be a number like 2.95",
    ),
    scenario(
        "with a negative idle power",
        POOL + '[pools.pricing]\nkind = "owned"\ngpu_idle_w = -5.0\n',
        "gpu_idle_w = -5.0 must be a finite number >= 0",
    ),
    scenario("with an unknown batcher", POOL + '[pools.batcher]\npolicy = "nope"\n', "nope"),
    scenario(
        "with max_num_seqs 0",
        POOL + '[pools.batcher]\npolicy = "vllm"\nmax_num_seqs = 0\n',
        "max_num_seqs = 0 must be >= 1",
    ),
    scenario(
        "with a negative SLO",
        '[[tiers]]\nname = "fast"\nttft_slo_s = -1.0\n',
        "ttft_slo_s = -1.0 must be a finite number >= 0",
    ),
    scenario(
        "with autoscale bounds reversed",
        POOL + "[pools.autoscale]\nenabled = true\nmin_replicas = 5\nmax_replicas = 2\n",
        "min_replicas = 5 is above max_replicas = 2",
    ),
    scenario("with an unknown balancer", '[balancer]\npolicy = "nope"\n', "unknown balancer"),
    scenario(
        "with an idle power above the gpu's TDP",
        POOL + 'gpu = "l40s"\n[pools.pricing]\nkind = "owned"\ngpu_idle_w = 500.0\n',
        "gpu_idle_w = 500.0 exceeds gpu_tdp_w = 350.0",
    ),
    scenario("with a negative max_model_len", "[model]\nmax_model_len = -5\n", "max_model_len"),
    scenario(
        "with max_model_len above the context",
        "[model]\nmax_model_len = 200000\n",
        "exceeds llama-3.1-8b's context of 131,072 tokens",
    ),
    scenario(
        "with an unknown unknown_tier",
        '[gateway]\nunknown_tier = "drop"\n',
        "unknown_tier = 'drop'; use 'default' or 'reject'",
    ),
    scenario(
        "with a deferred tier without a deadline",
        '[[tiers]]\nname = "batch"\ndeferred = true\n',
        "a deferred tier needs a deadline_s > 0",
    ),
    scenario("with pools not an array", 'pools = "x"\n', "pools must be an array of tables"),
    scenario("with a tier without a name", "[[tiers]]\nttft_slo_s = 1.0\n", "needs a name"),
    scenario(
        "routing a tier to an unknown pool",
        '[[tiers]]\nname = "fast"\npools = ["gpu-x"]\n',
        "gpu-x",
    ),
    scenario("with a zero interval", "interval_s = 0.0\n", "interval_s = 0.0 must be"),
    case("replay: tp 0", f"{R} --tp 0", "tp = 0 must be >= 1"),
    case("replay: tp not a number", f"{R} --tp x", "'x' is not a valid integer"),
    case("replay: tp that does not divide the heads", f"{R} --tp 3", "tp = 3 does not divide"),
    case("replay: zero replicas", f"{R} --replicas 0", "replicas = 0 must be >= 1"),
    case("replay: negative replicas", f"{R} --replicas -3", "replicas = -3 must be >= 1"),
    case("replay: unknown batcher", f"{R} --batcher nope", "unknown batcher 'nope'"),
    case("replay: unknown balancer", f"{R} --balancer nope", "unknown balancer 'nope'"),
    case("replay: zero max-num-seqs", f"{R} --max-num-seqs 0", "max_num_seqs = 0 must be >= 1"),
    case(
        "replay: a token budget below the batch cap",
        f"{R} --max-batched-tokens 4 --max-num-seqs 8",
        "max_num_batched_tokens = 4 must be >= max_num_seqs = 8",
    ),
    case(
        "replay: a token budget for the static batcher",
        f"{R} --batcher static --max-batched-tokens 100",
        "does not apply to the 'static' batcher",
    ),
    case("replay: zero interval", f"{R} --interval 0", "interval_s = 0.0 must be"),
    case("replay: negative interval", f"{R} --interval -1", "interval_s = -1.0 must be"),
    case("replay: NaN interval", f"{R} --interval nan", "interval_s = nan must be"),
    case("replay: a billion intervals", f"{R} --interval 1e-9", "timeline intervals"),
    case("replay: unknown model", f"{R} --model nope", "unknown model 'nope'"),
    case(
        "replay: a model file missing keys",
        f"{R} --model m.toml",
        "m.toml: missing key 'n_layers'",
        files={"m.toml": 'name = "m"\n'},
    ),
    case("replay: unknown gpu", f"{R} --gpu nope", "unknown GPU 'nope'"),
    case(
        "replay: a gpu profile that is not one",
        f"{R} --gpu p.toml",
        "p.toml: missing key 'format'",
        files={"p.toml": 'name = "p"\n'},
    ),
    case("replay: unknown engine", f"{R} --engine nope", "unknown engine 'nope'"),
    case(
        "replay: max-model-len above the context",
        f"{R} --max-model-len 999999",
        "(--max-model-len on the command line)",
    ),
    case("replay: unknown --unknown-tier", f"{R} --unknown-tier x", "'x' is not one of"),
    case("replay: the trace as the output", f"{R} --out " + "{trace}", "is a file"),
    case("replay: the current directory as the output", f"{R} --out .", "replacing it would"),
    case("replay: an output under /proc", f"{R} --out /proc/x", "cannot write in /proc"),
    case(
        "replay: an output folder holding the trace",
        "replay in/t.parquet --out in",
        "replacing it would delete",
        files={"in/t.parquet": b""},
    ),
    case(
        "replay: an output folder holding its scenario",
        f"{R} --out " + "{run} --scenario {run}/scenario.toml",
        "replacing it would delete",
    ),
    case(
        "replay: a foreign non-empty output folder",
        f"{R} --out mine",
        "holds no earlier summary.json",
        files={"mine/notes.txt": "keep"},
    ),
    case("replay: a text seed", f"{R} --seed x", "'x' is not a valid integer"),
    case("replay: no replications", f"{R} --seeds 0", "--seeds 0: expected at least 1"),
    case("replay: a sample of 2", f"{R} --records sample:2", "--records sample:2: expected all"),
    case("replay: unknown records", f"{R} --records some", "--records some: expected all, none"),
    case(
        "replay: a report without records",
        f"{R} --records none --report",
        "--report draws the requests' records, which --records none does not keep",
    ),
    case(
        "replay: seeds into a foreign folder",
        f"{R} --seeds 3 --out mine",
        "holds no earlier summary.json",
        files={"mine/notes.txt": "keep"},
    ),
    case("replay: unknown option", f"{R} --bogus", "No such option '--bogus'"),
    case("replay: no trace", "replay", "Missing argument 'TRACE'"),
    case(
        "replay: tiers missing from the scenario under reject",
        f"{R} --unknown-tier reject",
        "trace tiers 'fast' (",
    ),
    case(
        "replay: prefix hashes without a block size",
        "replay h.parquet",
        "prefix_hashes has no block size (the footer key tokenfleet.prefix_block_size is missing)",
        files={"h.parquet": hashed_trace([[1, 2], [1]], None)},
    ),
    case(
        "replay: prefix hashes with a zero block size",
        "replay h.parquet",
        "tokenfleet.prefix_block_size is 0)",
        files={"h.parquet": hashed_trace([[1, 2], [1]], b"0")},
    ),
    case(
        "replay: a block size that is not a number",
        "replay h.parquet",
        "tokenfleet.prefix_block_size = 'big' is not a whole number of tokens",
        files={"h.parquet": hashed_trace([[1, 2], [1]], b"big")},
    ),
    case(
        "replay: more prefix hashes than prompt blocks",
        "replay h.parquet",
        "row 1: prefix_hashes has 2 ids, but its 40-token prompt has 1 blocks of 512 tokens",
        files={"h.parquet": hashed_trace([[1, 2], [1, 2]], b"512")},
    ),
    scenario(
        "with a text enable_prefix_caching",
        POOL + '[pools.batcher]\npolicy = "vllm"\nenable_prefix_caching = "yes"\n',
        "enable_prefix_caching = 'yes' should be a bool like true",
    ),
    scenario(
        "with a pool block size the sglang page size contradicts",
        POOL + 'block_size = 32\n[pools.batcher]\npolicy = "sglang"\n',
        "pool 'default': block_size = 32 but the sglang batcher's page_size = 1 is its KV block;",
    ),
]
