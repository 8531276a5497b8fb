"""`tokenfleet traces convert|synth|validate|inspect`: bad sources (content, kind, place), bad
options, outputs that lack .parquet, replace an input or cannot be made, and repeated request
ids (also through the reader a replay uses).

A FIFO cannot be made through `files`: tests/test_traces_bad_input.py runs those (and a piped
/dev/stdin) in a child process with a timeout, so a hang fails instead of blocking the suite.
"""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bad_inputs import case


def parquet(row_group_size: int | None = None, **columns) -> bytes:
    """The bytes of a Parquet file holding these columns (valid or not as a trace)."""
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink, row_group_size=row_group_size)
    return sink.getvalue()


def trace(n: int, **extra) -> dict:
    """The columns of a valid n-row trace, plus `extra` ones."""
    return {
        "arrival_s": np.arange(n, dtype=float),
        "prompt_tokens": np.ones(n, np.int32),
        "output_tokens": np.ones(n, np.int32),
        **extra,
    }


AZURE = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
GOOD = "2023-11-16 18:17:03.9799600,4808,10\n"
GENERIC = "arrival_s,prompt_tokens,output_tokens\n"
A_CSV = {"a.csv": AZURE + GOOD}
MOONCAKE = '{"timestamp": 0, "input_length": 5, "output_length": 6, "hash_ids": [1]}\n'
PIPES = "pipes and devices are not supported, save the data to a file first"
SUFFIX = "a trace is written as Parquet; give it the .parquet suffix"

CONVERT = [
    case(
        "traces convert: missing source",
        "traces convert nope.csv o.parquet",
        "nope.csv: no such file",
    ),
    case(
        "traces convert: source is a directory",
        "traces convert {run} o.parquet",
        "run: is a directory; expected a CSV or JSON-lines trace",
    ),
    case(
        "traces convert: source is a Parquet trace",
        "traces convert {trace} o.parquet",
        "trace.parquet: is a Parquet file; convert reads CSV or JSON lines (check a Parquet "
        "trace with `tokenfleet traces validate`)",
    ),
    case(
        "traces convert: source is a character device",
        "traces convert /dev/null o.parquet",
        f"/dev/null: is a character device; {PIPES} (expected a CSV or JSON-lines trace)",
    ),
    case(
        "traces convert: empty source",
        "traces convert e.csv o.parquet",
        "e.csv: file is empty; expected a CSV header or JSON lines",
        files={"e.csv": ""},
    ),
    case(
        "traces convert: blank source",
        "traces convert e.csv o.parquet",
        "e.csv: file is empty",
        files={"e.csv": "\n \n"},
    ),
    case(
        "traces convert: header without rows",
        "traces convert h.csv o.parquet",
        "h.csv: has a header but no rows; expected at least one request",
        files={"h.csv": AZURE.strip()},
    ),
    case(
        "traces convert: binary source",
        "traces convert b.csv o.parquet",
        "b.csv: not a CSV or JSON-lines file (it holds binary data)",
        files={"b.csv": bytes(range(256)) * 4},
    ),
    case(
        "traces convert: source not UTF-8",
        "traces convert l.csv o.parquet",
        "l.csv: not a CSV or JSON-lines file (not UTF-8 text)",
        files={"l.csv": b"a,b\n\xff\xfe,1\n" + b"2,3\n" * 4},
    ),
    case(
        "traces convert: Parquet bytes named .csv",
        "traces convert p.csv o.parquet",
        "p.csv: is a Parquet file; convert reads CSV or JSON lines",
        files={"p.csv": b"PAR1\x00\x00"},
    ),
    case(
        "traces convert: a JSON array",
        "traces convert a.json o.parquet",
        "a.json: is a JSON array; expected JSON lines (one object per line)",
        files={"a.json": '[{"a": 1}]'},
    ),
    case(
        "traces convert: a broken first JSON line",
        "traces convert a.jsonl o.parquet",
        "a.jsonl: line 1: expected a JSON object per line, got '{\"timestamp\": 1,'",
        files={"a.jsonl": '{"timestamp": 1,\n'},
    ),
    case(
        "traces convert: negative prompt tokens",
        "traces convert bad.csv o.parquet",
        "bad.csv: column 'ContextTokens', line 3: expected a whole number of tokens >= 1 "
        "(a request has at least one prompt token), got -5",
        files={"bad.csv": AZURE + GOOD + "2023-11-16 18:17:04.0319600,-5,8\n"},
    ),
    case(
        "traces convert: NaN output tokens",
        "traces convert bad.csv o.parquet",
        "bad.csv: column 'GeneratedTokens', line 3: expected a whole number of tokens "
        "(at most 2147483647), got nan",
        files={"bad.csv": AZURE + GOOD + "2023-11-16 18:17:04.0319600,100,nan\n"},
    ),
    case(
        "traces convert: text tokens",
        "traces convert bad.csv o.parquet",
        "bad.csv: column 'ContextTokens', line 4: expected a whole number of tokens, got 'abc'",
        files={"bad.csv": AZURE + GOOD + GOOD + "2023-11-16 18:17:04.0319600,abc,8\n"},
    ),
    case(
        "traces convert: empty token count",
        "traces convert bad.csv o.parquet",
        "bad.csv: column 'ContextTokens', line 3: expected a whole number of tokens, got ''",
        files={"bad.csv": AZURE + GOOD + "2023-11-16 18:17:04.0319600,,8\n"},
    ),
    case(
        "traces convert: bad timestamp",
        "traces convert bad.csv o.parquet",
        "bad.csv: column 'TIMESTAMP', line 3: expected a wall-clock timestamp like "
        "2023-11-16 18:17:03.9799600, got '16/11/2023 18:17'",
        files={"bad.csv": AZURE + GOOD + "16/11/2023 18:17,5,8\n"},
    ),
    case(
        "traces convert: decreasing arrivals",
        "traces convert bad.csv o.parquet",
        "bad.csv: column 'TIMESTAMP', line 3: expected arrivals that never decrease (sort the "
        "file by time), got -1.97996 s, earlier than the previous row's 0.0 s",
        files={"bad.csv": AZURE + GOOD + "2023-11-16 18:17:02.0000000,5,8\n"},
    ),
    case(
        "traces convert: earliest of several problems, a bad value",
        "traces convert bad.csv o.parquet",
        "bad.csv: column 'ContextTokens', line 3: expected a whole number of tokens >= 1 "
        "(a request has at least one prompt token), got -5",
        files={
            "bad.csv": AZURE
            + GOOD
            + "2023-11-16 18:17:04.1,-5,8\n2023-11-16 18:17:04.2,abc,8\nsoon,5,8\n"
        },
    ),
    case(
        "traces convert: earliest of several problems, an unreadable value",
        "traces convert bad.csv o.parquet",
        "bad.csv: column 'GeneratedTokens', line 3: expected a whole number of tokens, got 'x'",
        files={
            "bad.csv": AZURE
            + GOOD
            + "2023-11-16 18:17:04.1,5,x\n2023-11-16 18:17:04.2,-5,8\nsoon,5,8\n"
        },
    ),
    case(
        "traces convert: NaN arrival in a generic CSV",
        "traces convert g.csv o.parquet",
        "g.csv: column 'arrival_s', line 3: expected finite seconds, got nan",
        files={"g.csv": GENERIC + "0,1,1\nnan,2,2\n"},
    ),
    case(
        "traces convert: one typo among numeric arrivals",
        "traces convert g.csv o.parquet",
        "g.csv: column 'arrival_s', line 4: expected a number of seconds, got 'abc'",
        files={"g.csv": GENERIC + "0.5,10,1\n1.0,10,1\nabc,10,1\n"},
    ),
    case(
        "traces convert: tokens beyond int32",
        "traces convert g.csv o.parquet",
        "g.csv: column 'prompt_tokens', line 2: expected a whole number of tokens "
        "(at most 2147483647), got 1e+20",
        files={"g.csv": GENERIC + "0.5,1e20,1\n"},
    ),
    case(
        "traces convert: generic CSV without arrival_s",
        "traces convert g.csv o.parquet",
        "g.csv: column 'arrival_s' is missing; format csv needs it for arrival_s (found: ts, in, "
        "out; map another with --columns arrival_s=NAME)",
        files={"g.csv": "ts,in,out\n1,2,3\n"},
    ),
    case(
        "traces convert: --format azure without GeneratedTokens",
        "traces convert a.csv o.parquet --format azure",
        "a.csv: column 'GeneratedTokens' is missing; format azure needs it for output_tokens",
        files={"a.csv": "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03,5\n"},
    ),
    case(
        "traces convert: unknown --format",
        "traces convert a.csv o.parquet --format parquet",
        "a.csv: unknown --format 'parquet'; expected one of auto, azure, burstgpt, mooncake, "
        "vidur, csv, jsonl",
        files=A_CSV,
    ),
    case(
        "traces convert: --format mooncake on a CSV",
        "traces convert a.csv o.parquet --format mooncake",
        "a.csv: --format mooncake reads JSON lines, but this is csv",
        files=A_CSV,
    ),
    case(
        "traces convert: --format azure on JSON lines",
        "traces convert m.jsonl o.parquet --format azure",
        "m.jsonl: --format azure reads a CSV file, but this is jsonl",
        files={"m.jsonl": MOONCAKE},
    ),
    case(
        "traces convert: --columns mapped twice",
        "traces convert g.csv o.parquet --columns arrival_s=arrival_s,arrival_s=prompt_tokens",
        "--columns: 'arrival_s' is mapped twice; map each column once",
        files={"g.csv": GENERIC + "0.5,10,1\n"},
    ),
    case(
        "traces convert: --columns without =",
        "traces convert g.csv o.parquet --columns arrival_s",
        "--columns: 'arrival_s' is not OUTPUT=SOURCE",
        files={"g.csv": GENERIC + "0.5,10,1\n"},
    ),
    case(
        "traces convert: --columns names a column the file lacks",
        "traces convert g.csv o.parquet --columns arrival_s=ts",
        "g.csv: --columns arrival_s=ts: the file has no column 'ts' (found: arrival_s, "
        "prompt_tokens, output_tokens)",
        files={"g.csv": GENERIC + "0.5,10,1\n"},
    ),
    case(
        "traces convert: a window after the last request",
        "traces convert a.csv o.parquet --start-s 100",
        "a.csv: no requests in the window [100.0, end) s; the trace's last request is at 0.000 s",
        files=A_CSV,
    ),
    case(
        "traces convert: --time-scale 0",
        "traces convert a.csv o.parquet --time-scale 0",
        "--time-scale 0.0: expected a factor > 0 (0.5 = twice as fast)",
        files=A_CSV,
    ),
    case(
        "traces convert: --time-scale not a number",
        "traces convert a.csv o.parquet --time-scale x",
        "'x' is not a valid float",
        files=A_CSV,
    ),
    case(
        "traces convert: unknown --time-unit",
        "traces convert a.csv o.parquet --time-unit h",
        "--time-unit 'h': expected one of s, ms, us, ns",
        files=A_CSV,
    ),
    case(
        "traces convert: negative --shift-s",
        "traces convert a.csv o.parquet --shift-s -1",
        "--shift-s -1.0: expected seconds >= 0 (arrivals start at 0)",
        files=A_CSV,
    ),
    case(
        "traces convert: negative --start-s",
        "traces convert a.csv o.parquet --start-s -1",
        "--start-s -1.0: expected seconds >= 0 from the first request",
        files=A_CSV,
    ),
    case(
        "traces convert: --end-s before --start-s",
        "traces convert a.csv o.parquet --start-s 2 --end-s 1",
        "--end-s 1.0 must be after --start-s 2.0",
        files=A_CSV,
    ),
    case(
        "traces convert: --limit 0",
        "traces convert a.csv o.parquet --limit 0",
        "--limit 0: expected a number of requests >= 1",
        files=A_CSV,
    ),
    case(
        "traces convert: every BurstGPT row failed",
        "traces convert b.csv o.parquet",
        "b.csv: all 1 rows are failed requests (zero tokens); keep them with --keep-failed",
        files={
            "b.csv": "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "5,ChatGPT,10,0,10,Conversation log\n"
        },
    ),
    case(
        "traces convert: a JSON string where a number belongs",
        "traces convert m.jsonl o.parquet",
        "m.jsonl: column 'input_length', line 2: expected a number, got a string",
        files={"m.jsonl": MOONCAKE + '{"timestamp": 9, "input_length": "5", "output_length": 6}\n'},
    ),
    case(
        "traces convert: a broken JSON line",
        "traces convert m.jsonl o.parquet",
        "m.jsonl: line 3: JSON parse error",
        files={"m.jsonl": MOONCAKE + MOONCAKE + '{"timestamp": 9, "input_length": 5\n'},
    ),
    case(
        "traces convert: a JSON object where text belongs",
        "traces convert t.jsonl o.parquet",
        "t.jsonl: column 'tenant', line 1: expected a number or text, got values of type struct",
        files={
            "t.jsonl": '{"arrival_s": 1, "prompt_tokens": 5, "output_tokens": 1, '
            '"tenant": {"a": 1}}\n'
        },
    ),
    case(
        "traces convert: output named .csv",
        "traces convert a.csv o.csv",
        f"DST o.csv: {SUFFIX} (e.g. o.parquet)",
        files=A_CSV,
    ),
    case(
        "traces convert: output without a suffix",
        "traces convert a.csv out",
        f"DST out: {SUFFIX} (e.g. out.parquet)",
        files=A_CSV,
    ),
    case(
        "traces convert: output named .parq",
        "traces convert a.csv o.parq",
        f"DST o.parq: {SUFFIX}",
        files=A_CSV,
    ),
    case(
        "traces convert: output is the source",
        "traces convert a.csv a.csv",
        "DST a.csv: is the same file as SRC a.csv; choose another output path",
        files=A_CSV,
    ),
    case(
        "traces convert: output is the source by another name",
        "traces convert a.csv ./sub/../a.csv",
        "DST sub/../a.csv: is the same file as SRC a.csv; choose another output path",
        files={**A_CSV, "sub/keep": ""},
    ),
    case(
        "traces convert: output in a missing directory",
        "traces convert a.csv no/o.parquet",
        "no/o.parquet: directory no does not exist",
        files=A_CSV,
    ),
    case(
        "traces convert: output under /proc",
        "traces convert a.csv /proc/o.parquet",
        "/proc/o.parquet: cannot write in /proc",
        files=A_CSV,
    ),
    case(
        "traces convert: output is a directory",
        "traces convert a.csv d.parquet",
        "d.parquet: is a directory; give a file name for the trace",
        files={**A_CSV, "d.parquet/keep": ""},
    ),
    case(
        "traces convert: output missing",
        "traces convert a.csv",
        "Missing argument 'DST'",
        files=A_CSV,
    ),
    case(
        "traces convert: unknown option",
        "traces convert a.csv o.parquet --bogus",
        "No such option '--bogus'",
        files=A_CSV,
    ),
]

BAD_LENGTHS = parquet(**trace(1) | {"prompt_tokens": np.zeros(1, np.int32)})
SYNTH = "traces synth o.parquet --requests 10"

SYNTH_CASES = [
    case(
        "traces synth: output is the --lengths-from trace",
        "traces synth {trace} --requests 5 --lengths-from {trace}",
        "DST trace.parquet: is the same file as --lengths-from trace.parquet; "
        "choose another output path",
    ),
    case(
        "traces synth: output is the --lengths-from trace by another name",
        "traces synth ./trace.parquet --requests 5 --lengths-from run/../trace.parquet",
        "DST trace.parquet: is the same file as --lengths-from run/../trace.parquet",
    ),
    case(
        "traces synth: output named .csv", "traces synth o.csv --requests 5", f"DST o.csv: {SUFFIX}"
    ),
    case(
        "traces synth: output without a suffix", "traces synth o --requests 5", f"DST o: {SUFFIX}"
    ),
    case(
        "traces synth: output under /proc",
        "traces synth /proc/x.parquet --requests 5",
        "/proc/x.parquet: cannot write in /proc",
    ),
    case(
        "traces synth: output under /proc/self",
        "traces synth /proc/self/x.parquet --requests 5",
        "/proc/self/x.parquet: directory /proc/self ",
    ),
    case(
        "traces synth: output in a missing directory",
        "traces synth no/o.parquet --requests 1",
        "no/o.parquet: directory no does not exist",
    ),
    case(
        "traces synth: output is a directory",
        "traces synth d.parquet --requests 1",
        "d.parquet: is a directory; give a file name for the trace",
        files={"d.parquet/keep": ""},
    ),
    case(
        "traces synth: no length given",
        "traces synth o.parquet",
        "give exactly one of --requests N, --duration-s S or --days D",
    ),
    case(
        "traces synth: --requests and --duration-s",
        "traces synth o.parquet --requests 5 --duration-s 10",
        "give exactly one of --requests N, --duration-s S or --days D",
    ),
    case(
        "traces synth: --days and --duration-s",
        "traces synth o.parquet --days 1 --duration-s 10",
        "give --days or --duration-s, not both",
    ),
    case(
        "traces synth: --requests 0",
        "traces synth o.parquet --requests 0",
        "--requests 0: expected",
    ),
    case(
        "traces synth: --requests x",
        "traces synth o.parquet --requests x",
        "'x' is not a valid integer",
    ),
    case(
        "traces synth: negative --duration-s",
        "traces synth o.parquet --duration-s -5",
        "--duration-s -5.0: expected seconds > 0",
    ),
    case(
        "traces synth: --duration-s too short",
        "traces synth o.parquet --duration-s 0.001 --rate 0.01",
        "--duration-s 0.001: too short for any request at 0.01 req/s",
    ),
    case(
        "traces synth: unknown --arrivals",
        f"{SYNTH} --arrivals weibull",
        "--arrivals 'weibull': expected one of poisson, gamma, diurnal",
    ),
    case(
        "traces synth: --rate 0",
        f"{SYNTH} --rate 0",
        "--rate 0.0: expected requests per second > 0",
    ),
    case(
        "traces synth: --rate inf",
        f"{SYNTH} --rate inf",
        "--rate inf: expected requests per second",
    ),
    case(
        "traces synth: --cv with Poisson arrivals",
        f"{SYNTH} --cv 2",
        "--cv 2.0 needs --arrivals gamma (Poisson has CV 1)",
    ),
    case(
        "traces synth: --cv 0",
        f"{SYNTH} --arrivals gamma --cv 0",
        "--cv 0.0: expected a coefficient of variation > 0",
    ),
    case(
        "traces synth: --peak-trough below 1",
        f"{SYNTH} --arrivals diurnal --peak-trough 0.5",
        "--peak-trough 0.5: expected a ratio >= 1",
    ),
    case(
        "traces synth: --peak-hour 24",
        f"{SYNTH} --arrivals diurnal --peak-hour 24",
        "--peak-hour 24.0: expected an hour in [0, 24)",
    ),
    case(
        "traces synth: negative --seed", f"{SYNTH} --seed -1", "--seed -1: expected an integer >= 0"
    ),
    case(
        "traces synth: --prompt not a distribution",
        f"{SYNTH} --prompt lognormal:abc",
        "--prompt 'lognormal:abc': expected lognormal:MEAN,SIGMA[,MAX], fixed:N or "
        "uniform:LOW,HIGH",
    ),
    case(
        "traces synth: --prompt beyond int32",
        f"{SYNTH} --prompt fixed:3000000000",
        "--prompt 'fixed:3000000000': token counts must be <= 2147483647 (int32)",
    ),
    case(
        "traces synth: --prompt mean below 1",
        f"{SYNTH} --prompt lognormal:0.5,1",
        "--prompt 'lognormal:0.5,1': the mean must be >= 1 and sigma >= 0",
    ),
    case(
        "traces synth: --output uniform upside down",
        f"{SYNTH} --output uniform:5,2",
        "--output 'uniform:5,2': expected lognormal:MEAN,SIGMA[,MAX]",
    ),
    case(
        "traces synth: --output uniform with fractions",
        f"{SYNTH} --output uniform:1.5,3",
        "--output 'uniform:1.5,3': LOW and HIGH must be whole numbers of tokens",
    ),
    case(
        "traces synth: --lengths-from with --prompt",
        f"{SYNTH} --lengths-from {{trace}} --prompt fixed:5",
        "--lengths-from resamples both lengths; drop --prompt and --output",
    ),
    case(
        "traces synth: --tenants share without a value",
        f"{SYNTH} --tenants a=0.5,b",
        "--tenants: 'b' is not NAME=SHARE with a share > 0 (a=0.7,b=0.3)",
    ),
    case(
        "traces synth: --tiers name given twice",
        f"{SYNTH} --tiers fast=1,fast=2",
        "--tiers: 'fast' is given twice; give each name once",
    ),
    case("traces synth: --tenants 0", f"{SYNTH} --tenants 0", "--tenants 0: expected at least one"),
    case(
        "traces synth: --tiers with no pairs",
        [*SYNTH.split(), "--tiers", ","],
        "--tiers: expected NAME=SHARE pairs like a=0.7,b=0.3, or a count",
    ),
    case(
        "traces synth: --lengths-from a missing file",
        f"{SYNTH} --lengths-from nope.parquet",
        "nope.parquet: no such file",
    ),
    case(
        "traces synth: --lengths-from a directory",
        f"{SYNTH} --lengths-from {{run}}",
        "run: is a directory; expected a Parquet trace file",
    ),
    case(
        "traces synth: --lengths-from a character device",
        f"{SYNTH} --lengths-from /dev/null",
        f"/dev/null: is a character device; {PIPES} (expected a Parquet trace file)",
    ),
    case(
        "traces synth: --lengths-from a CSV",
        f"{SYNTH} --lengths-from a.csv",
        "a.csv: not a Parquet file; convert it first with `tokenfleet traces convert`",
        files=A_CSV,
    ),
    case(
        "traces synth: --lengths-from a trace with a bad row",
        f"{SYNTH} --lengths-from b.parquet",
        "b.parquet: column 'prompt_tokens', row 0: expected a whole number of tokens >= 1",
        files={"b.parquet": BAD_LENGTHS},
    ),
]

# Parquet files that are not valid traces: name -> (bytes, message after "t.parquet: ").
NOT_TRACES = {
    "missing column": (
        parquet(arrival_s=[0.0], prompt_tokens=[1]),
        "column 'output_tokens' is missing; a trace needs arrival_s, prompt_tokens, "
        "output_tokens (found: arrival_s, prompt_tokens)",
    ),
    "float tokens": (
        parquet(arrival_s=[0.0], prompt_tokens=[1.5], output_tokens=[1]),
        "column 'prompt_tokens' has type double; expected integer token counts",
    ),
    "text arrivals": (
        parquet(arrival_s=["0"], prompt_tokens=[1], output_tokens=[1]),
        "column 'arrival_s' has type string; expected float64 seconds",
    ),
    "float request ids": (
        parquet(**trace(2, request_id=[1.0, 2.0])),
        "column 'request_id' has type double; expected int64 or string",
    ),
    "negative tokens": (
        parquet(arrival_s=[0.0, 1.0, 2.0], prompt_tokens=[1, 2, 3], output_tokens=[1, -2, 3]),
        "column 'output_tokens', row 1: expected a whole number of tokens >= 0, got -2",
    ),
    "null tokens": (
        parquet(arrival_s=[0.0, 1.0], prompt_tokens=[1, None], output_tokens=[1, 1]),
        "column 'prompt_tokens', row 1: expected a value, got an empty value",
    ),
    "NaN arrival": (
        parquet(arrival_s=[0.0, np.nan], prompt_tokens=[1, 2], output_tokens=[1, 1]),
        "column 'arrival_s', row 1: expected finite seconds, got nan",
    ),
    "decreasing arrivals": (
        parquet(arrival_s=[0.0, 2.0, 1.0], prompt_tokens=[1, 2, 3], output_tokens=[1, 1, 1]),
        "column 'arrival_s', row 2: expected arrivals that never decrease (sort the file by "
        "time), got 1.0 s, earlier than the previous row's 2.0 s",
    ),
    "tokens beyond int32": (
        parquet(arrival_s=[0.0, 1.0], prompt_tokens=[1, 2**40], output_tokens=[1, 1]),
        "column 'prompt_tokens', row 1: expected a whole number of tokens >= 1 and <= 2147483647 "
        "(the int32 of the trace format), got 1099511627776",
    ),
    "no rows": (
        parquet(
            arrival_s=pa.array([], pa.float64()),
            prompt_tokens=pa.array([], pa.int32()),
            output_tokens=pa.array([], pa.int32()),
        ),
        "the trace has no rows; expected at least one request",
    ),
    "repeated integer ids": (
        parquet(**trace(6, request_id=[5, 3, 9, 3, 5, 3])),
        "column 'request_id': id 3 is repeated (rows 1, 3 and 5); give each request its own "
        "id, or drop the column to number requests by row",
    ),
    "repeated text ids, nulls between": (
        parquet(**trace(6, request_id=["a", "b", None, None, "c", "b"])),
        "column 'request_id': id 'b' is repeated (rows 1 and 5)",
    ),
    "repeated dictionary-encoded ids": (
        parquet(**trace(3, request_id=pa.array(["x", "y", "x"]).dictionary_encode())),
        "column 'request_id': id 'x' is repeated (rows 0 and 2)",
    ),
    "one id in every row group": (
        parquet(row_group_size=3, **trace(20, request_id=np.zeros(20, np.int64))),
        "column 'request_id': id 0 is repeated (rows 0, 1, 2, 3, 4 and 15 more)",
    ),
    "ids increasing then repeating the first": (
        parquet(row_group_size=4, **trace(10, request_id=[*range(1, 10), 1])),
        "column 'request_id': id 1 is repeated (rows 0 and 9)",
    ),
    "repeated ids and a bad value": (
        parquet(**trace(3, request_id=[7, 7, 8]) | {"prompt_tokens": [1, 1, 0]}),
        "column 'request_id': id 7 is repeated (rows 0 and 1)",
    ),
}

NOT_FILES = {
    "missing file": ("traces {command} nope.parquet", "nope.parquet: no such file", {}),
    "a directory": (
        "traces {command} {{run}}",
        "run: is a directory; expected a Parquet trace file",
        {},
    ),
    "a character device": (
        "traces {command} /dev/null",
        f"/dev/null: is a character device; {PIPES}",
        {},
    ),
    "an empty file": (
        "traces {command} e.parquet",
        "e.parquet: file is empty; expected a Parquet trace",
        {"e.parquet": b""},
    ),
    "a CSV": (
        "traces {command} t.csv",
        "t.csv: not a Parquet file; convert it first with `tokenfleet traces convert`",
        {"t.csv": b"a,b\n1,2\n"},
    ),
    "a truncated Parquet file": (
        "traces {command} t.parquet",
        "t.parquet: not a Parquet file; expected a trace written by tokenfleet (or any Parquet "
        "file), not a truncated one",
        {"t.parquet": b"PAR1" + b"\x00" * 40},
    ),
}

READ = [
    case(f"traces {command}: {name}", f"traces {command} t.parquet", f"t.parquet: {message}",
         files={"t.parquet": content})
    for command in ("validate", "inspect")
    for name, (content, message) in NOT_TRACES.items()
] + [
    case(f"traces {command}: {name}", args.format(command=command), message, files=files)
    for command in ("validate", "inspect")
    for name, (args, message, files) in NOT_FILES.items()
] + [
    case("traces inspect --json: repeated ids", "traces inspect --json t.parquet",
         "id 3 is repeated", files={"t.parquet": NOT_TRACES["repeated integer ids"][0]}),
    case(
        "traces validate: an unsigned id beyond int64",
        "traces validate t.parquet",
        "t.parquet: column 'request_id', row 1: expected an integer id <= 9223372036854775807 "
        "(int64), got 9223372036854775813",
        files={"t.parquet": parquet(**trace(2, request_id=pa.array([1, 2**63 + 5], pa.uint64())))},
    ),
    case("traces validate: unknown option", "traces validate {trace} --bogus",
         "No such option '--bogus'"),
    case("traces: unknown subcommand", "traces merge {trace}", "No such command 'merge'"),
    case(
        "traces reader in replay: repeated request ids, refused before any output",
        "replay t.parquet --replicas 1 --out out --quiet",
        "t.parquet: column 'request_id': id 3 is repeated (rows 1, 3 and 5)",
        files={"t.parquet": NOT_TRACES["repeated integer ids"][0]},
    ),
]  # fmt: skip

PREFIX_CASES = [
    case(
        "traces synth: --system-prompt-tokens without --system-prompts",
        f"{SYNTH} --system-prompt-tokens 500",
        "give --system-prompts N and --system-prompt-tokens L together",
    ),
    case(
        "traces synth: --system-prompts 0",
        f"{SYNTH} --system-prompts 0 --system-prompt-tokens 500",
        "--system-prompts 0: expected at least 1",
    ),
    case(
        "traces synth: --prefix-zipf without system prompts",
        f"{SYNTH} --prefix-zipf 1.1",
        "--prefix-zipf sets system prompt popularity; add --system-prompts",
    ),
    case(
        "traces synth: negative --think-time-s",
        f"{SYNTH} --turns fixed:3 --think-time-s fixed:-2",
        "--think-time-s 'fixed:-2': expected fixed:S, uniform:LOW,HIGH, exponential:MEAN or "
        "lognormal:MEAN,SIGMA (seconds >= 0)",
    ),
    case(
        "traces synth: --think-time-s without --turns",
        f"{SYNTH} --think-time-s fixed:2",
        "--think-time-s is the gap between turns; add --turns",
    ),
    case(
        "traces synth: --turns 0",
        f"{SYNTH} --turns fixed:0",
        "--turns 'fixed:0': expected lognormal:MEAN,SIGMA[,MAX], fixed:N or uniform:LOW,HIGH",
    ),
    case(
        "traces synth: --prefix-block-tokens without prefixes",
        f"{SYNTH} --prefix-block-tokens 16",
        "--prefix-block-tokens sizes prefix_hashes; add --system-prompts or --turns",
    ),
    case(
        "traces inspect: --cache-tokens 0",
        "traces inspect {trace} --cache-tokens 0",
        "--cache-tokens 0: expected tokens >= 1",
    ),
    case(
        "traces inspect: --cache-tokens without a block size",
        "traces inspect h.parquet --cache-tokens 1000",
        "h.parquet: --cache-tokens needs the prefix block size, and the trace's metadata has no "
        "tokenfleet.prefix_block_size",
        files={"h.parquet": parquet(**trace(2, prefix_hashes=[[1, 2], [1]]))},
    ),
    case(
        "traces validate: a negative turn",
        "traces validate t.parquet",
        "t.parquet: column 'turn', row 1: expected a turn number >= 0 and <= 2147483647 (int32), "
        "got -1",
        files={"t.parquet": parquet(**trace(3, turn=[0, -1, None]))},
    ),
    case(
        "traces validate: a text turn",
        "traces validate t.parquet",
        "t.parquet: column 'turn' has type string; expected int32 turn numbers",
        files={"t.parquet": parquet(**trace(2, turn=["0", "1"]))},
    ),
]

CASES = CONVERT + SYNTH_CASES + READ + PREFIX_CASES
