"""`tokenfleet report`: directories that are not finished runs, damaged records, outputs that
would replace a run, and a --caching-run with nothing to split."""

from bad_inputs import case

WHERE = "give the output directory of a finished replay or frontier"
DAMAGED = b"PAR1" + b"\x00" * 64  # a Parquet file cut short: its magic, no footer

CASES = [
    case("report: no run at all", "report", "Missing argument 'RUN_DIRS...'"),
    case("report: missing directory", "report nope", f"nope: no such directory; {WHERE}"),
    case("report: a file as run", "report {trace}", f"trace.parquet: is a file; {WHERE}"),
    case(
        "report: a directory that is not a run",
        "report empty --out rep",
        "empty: no summary.json or frontier.parquet",
        files={"empty/notes.txt": "x"},
    ),
    case(
        "report: a summary that is not a replay's",
        "report bad --out rep",
        "bad/summary.json: no 'latency_s' block; not a replay summary",
        files={"bad/summary.json": '{"requests": 3}'},
    ),
    case(
        "report: requests.parquet cut short",
        "report {run} --out rep",
        "run/requests.parquet: not readable as Parquet",
        files={"run/requests.parquet": DAMAGED},
    ),
    case(
        "report: timeline.parquet cut short",
        "report {run} --out rep",
        "run/timeline.parquet: not readable as Parquet",
        files={"run/timeline.parquet": DAMAGED},
    ),
    case(
        "report: frontier.parquet cut short",
        "report fr --out rep",
        "fr/frontier.parquet: not readable as Parquet",
        files={"fr/frontier.parquet": DAMAGED},
    ),
    case(
        "report: second run damaged, default --out inside the first",
        "report {run} {run2}",
        "run2/timeline.parquet: not readable as Parquet",
        files={"run2/timeline.parquet": DAMAGED},
    ),
    case("report: --out onto the run", "report {run} --out {run}", "would delete"),
    case("report: --out onto the current directory", "report {run} --out .", "would delete"),
    case("report: --out onto a file", "report {run} --out {trace}", "is a file"),
    case(
        "report: --out onto a folder of other things",
        "report {run} --out stuff",
        "not empty and holds no earlier index.html",
        files={"stuff/keep.txt": "mine"},
    ),
    case(
        "report: --caching-run with one run",
        "report {run} --caching-run {run2} --out rep",
        "--caching-run needs two replay directories",
    ),
    case(
        "report: --caching-run that is not a run",
        "report {run} {run2} --caching-run nope --out rep",
        "nope: no such directory",
    ),
]
