"""`tokenfleet compare` and `tokenfleet frontier`: bad run directories and summaries, outputs
that would replace a run's files, bad --vary grids, values and output directories.

Every frontier case is refused before its first replay starts, so the table stays fast.
"""

from bad_inputs import case

CMP = "compare {run} {run2}"
FR = "frontier {trace} --vary max_num_seqs=4,8"
WHERE = "give the output directory of a finished replay"


def summary(name: str, content: str | bytes, message: str):
    """compare against a run whose summary.json holds `content`."""
    return case(
        f"compare: summary.json {name}",
        "compare {run} bad",
        f"bad/summary.json: {message}",
        files={"bad/summary.json": content},
    )


def vary(name: str, spec: str, message: str, *more: str):
    """frontier with one (or more) --vary specs that it must refuse."""
    extra = [arg for spec in more for arg in ("--vary", spec)]
    return case(f"frontier: {name}", ["frontier", "{trace}", "--vary", spec, *extra], message)


CASES = [
    # compare: the run directories
    case("compare: one run is no comparison", "compare {run}", "at least two run directories"),
    case("compare: no run at all", "compare", "Missing argument 'RUN_DIRS...'"),
    case("compare: missing directory", "compare {run} nope", f"nope: no such directory; {WHERE}"),
    case("compare: a file as run", "compare {run} {trace}", "trace.parquet: is a file;"),
    case("compare: a summary file as run", "compare {run} run2/summary.json", "is a file;"),
    case("compare: directory without summary", "compare {run} .", ".: no summary.json;"),
    case(
        "compare: summary.json is a directory",
        "compare {run} bad",
        "bad/summary.json: is a directory, not a replay summary",
        files={"bad/summary.json/x": ""},
    ),
    # compare: what summary.json holds
    summary("binary", b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not a text file (byte 0 is not UTF-8)"),
    summary("gzip", b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "not a text file (byte 1 is not UTF-8)"),
    summary("a JSON list", "[1, 2, 3]", "holds a JSON list, not a replay summary"),
    summary("a JSON number", "3", "holds a JSON number, not a replay summary"),
    summary("a JSON string", '"summary"', "holds a JSON string, not a replay summary"),
    summary("JSON null", "null", "holds a JSON null, not a replay summary"),
    summary("an empty object", "{}", "holds no figures (no numbers)"),
    summary("empty objects nested", '{"economics": {"fleet": {}}}', "holds no figures"),
    summary("only text", '{"model": "llama-3.1-8b", "ok": true}', "holds no figures"),
    summary("empty", "", "not valid JSON (Expecting value at line 1)"),
    summary("truncated", '{"requests": 200, "latency_s": {', "not valid JSON"),
    summary("nested too deeply", "[" * 100_000, "nested too deeply to be a replay summary"),
    # compare: --parquet must not replace what compare reads
    case(
        "compare: --parquet replaces a summary",
        f"{CMP} --parquet run/summary.json",
        "--parquet run/summary.json: lies inside run directory run, which this command reads",
    ),
    case(
        "compare: --parquet replaces the records",
        f"{CMP} --parquet run2/requests.parquet",
        "--parquet run2/requests.parquet: lies inside run directory run2",
    ),
    case(
        "compare: --parquet new file in a run",
        f"{CMP} --parquet run/cmp.parquet",
        "lies inside run directory run",
    ),
    case("compare: --parquet is a run", f"{CMP} --parquet run2", "lies inside run directory run2"),
    case(
        "compare: --parquet by another name",
        f"{CMP} --parquet ./run/../run/timeline.parquet",
        "lies inside run directory run",
    ),
    case("compare: --parquet a directory", f"{CMP} --parquet .", "--parquet .: is a directory"),
    case(
        "compare: --parquet in a missing directory",
        f"{CMP} --parquet no/cmp.parquet",
        "--parquet no/cmp.parquet: directory no does not exist",
    ),
    case(
        "compare: --parquet under /proc",
        f"{CMP} --parquet /proc/x.parquet",
        "--parquet /proc/x.parquet: cannot write in /proc",
    ),
    case("compare: --parquet without a value", f"{CMP} --parquet", "requires an argument"),
    case("compare: unknown option", f"{CMP} --bogus", "No such option '--bogus'"),
    # frontier: the grid
    case("frontier: nothing varied", "frontier {trace}", "needs at least one --vary"),
    vary("unknown setting", "colour=red", "varied setting 'colour' is unknown; use one of"),
    vary("no values", "max_num_seqs", "'max_num_seqs': expected NAME=V1,V2,..."),
    vary("empty values", "max_num_seqs=", "'max_num_seqs=': expected NAME=V1,V2,..."),
    vary("no name", "=1,2", "varied setting '' is unknown"),
    vary("not a number", "max_num_seqs=1,x", "'max_num_seqs': 'x' is not a whole number"),
    vary("a fraction", "replicas=1.5", "'replicas': '1.5' is not a whole number"),
    vary("a value twice", "max_num_seqs=8,8", "'max_num_seqs': a value is listed twice"),
    vary("an empty value", "gpu=h100-sxm,,a100-80gb", "'gpu': an empty value"),
    vary("a setting twice", "tp=1", "varied setting 'tp' is given twice", "tp=2"),
    vary("one setting by two names", "max-num-seqs=1", "is given twice", "max_num_seqs=2"),
    # frontier: values each point would run with
    vary("zero replicas", "replicas=1,0", "run replicas=0: pool 'default': replicas = 0 must be"),
    vary("zero tp", "tp=0", "run tp=0: pool 'default': tp = 0 must be >= 1"),
    vary("tp not dividing the heads", "tp=3", "run tp=3: tp = 3 does not divide"),
    vary("unknown gpu", "gpu=nope", "run gpu=nope: unknown GPU 'nope'"),
    vary("missing gpu profile", "gpu=./my-gpu.toml", "run gpu=./my-gpu.toml:"),
    vary("unknown model", "model=nope", "run model=nope: unknown model 'nope'"),
    vary("a model that does not fit", "model=llama-3.1-405b", "needs 756 GiB of weights"),
    vary("unknown batcher", "batcher=nope", "run batcher=nope: unknown batcher 'nope'"),
    vary("unknown balancer", "balancer=nope", "run balancer=nope: unknown balancer 'nope'"),
    vary("zero batch", "max_num_seqs=0,8", "run max_num_seqs=0: vllm: max_num_seqs = 0 must be"),
    vary("a budget below the batch", "max_batched_tokens=16", "max_num_batched_tokens = 16"),
    vary(
        "a setting the batcher lacks",
        "batcher=orca",
        "run batcher=orca,max_batched_tokens=512: max_num_batched_tokens does not apply to the "
        "'orca' batcher",
        "max_batched_tokens=512",
    ),
    # frontier: options and inputs
    case("frontier: --jobs 0", f"{FR} --jobs 0", "Invalid value for '--jobs': 0 is not in the"),
    case("frontier: --jobs -1", f"{FR} --jobs -1", "Invalid value for '--jobs': -1 is not"),
    case("frontier: --jobs not a number", f"{FR} --jobs many", "'many' is not a valid integer"),
    case("frontier: missing trace", "frontier nope.parquet --vary tp=1", "nope.parquet: no such"),
    case("frontier: a directory as trace", "frontier {run} --vary tp=1", "run: is a directory"),
    case(
        "frontier: JSON as trace",
        "frontier run/summary.json --vary tp=1",
        "run/summary.json: not a Parquet file",
    ),
    case(
        "frontier: records as trace",
        "frontier run/timeline.parquet --vary tp=1",
        "run/timeline.parquet:",
    ),
    case("frontier: missing scenario", f"{FR} --scenario nope.toml", "nope.toml: file not found"),
    case(
        "frontier: JSON as scenario",
        f"{FR} --scenario run/summary.json",
        "run/summary.json: not valid TOML",
    ),
    case(
        "frontier: unknown scenario key",
        f"{FR} --scenario bad.toml",
        "colour",
        files={"bad.toml": "colour = 1\n"},
    ),
    case(
        "frontier: tiers the scenario refuses",
        f"{FR} --scenario reject.toml",
        "are not in the scenario's tiers",
        files={
            "reject.toml": '[gateway]\nunknown_tier = "reject"\ndefault_tier = "gold"\n\n'
            '[[tiers]]\nname = "gold"\n'
        },
    ),
    case("frontier: unknown option", f"{FR} --bogus", "No such option '--bogus'"),
    # frontier: the output directory
    case("frontier: --out here", f"{FR} --out .", "output directory .: replacing it would delete"),
    case("frontier: --out the root", f"{FR} --out /", "output directory /: replacing it would"),
    case(
        "frontier: --out a replay",
        f"{FR} --out run",
        "output directory run: not empty and holds no earlier frontier.parquet",
    ),
    case(
        "frontier: --out someone's directory",
        f"{FR} --out mine",
        "output directory mine: not empty and holds no earlier frontier.parquet",
        files={"mine/notes.txt": "keep me"},
    ),
    case("frontier: --out the trace", f"{FR} --out trace.parquet", "trace.parquet: is a file"),
    case(
        "frontier: --out in a missing directory",
        f"{FR} --out no/such/dir",
        "no/such/dir: directory no/such does not exist",
    ),
    case("frontier: --out under /proc", f"{FR} --out /proc/x", "/proc/x: cannot write in /proc"),
    case(
        "frontier: --out holds the trace",
        "frontier fr/trace.parquet --vary tp=1 --out fr",
        "output directory fr: replacing it would delete",
        files={"fr/frontier.parquet": "an earlier output", "fr/trace.parquet": "x"},
    ),
    case(
        "frontier: --out holds the scenario",
        f"{FR} --scenario fr/my.toml --out fr",
        "output directory fr: replacing it would delete",
        files={"fr/frontier.parquet": "an earlier output", "fr/my.toml": "seed = 1\n"},
    ),
]
