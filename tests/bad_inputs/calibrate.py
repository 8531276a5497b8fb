"""`tokenfleet calibrate` and `calibrate fit-steps`: bad flags, outputs that cannot be written or
would replace an input, shapes no deployment has, no GPU, and broken step logs. Every refusal
comes before any measurement or fit, so each case takes milliseconds."""

import importlib.util
import json
from pathlib import Path

from bad_inputs import case
from tokenfleet.hardware.profile import PROFILES_DIR

SHARED_MEASURED = Path(__file__).resolve().parents[3] / "shared" / "data" / "measured"

RUN = "calibrate --backend numpy --quick"
FIT = "calibrate fit-steps steps.csv --gpu a100-80gb --model llama-3.1-8b"
HEADER = "prefill_tokens,decode_seqs,decode_context_tokens,step_ms\n"
STEPS = {"steps.csv": HEADER + "0,4,400,9.5\n128,0,0,30\n"}
A100 = (PROFILES_DIR / "a100-80gb.toml").read_text()
MODEL_TOML = """name = "tiny"
n_layers = 2
hidden_size = 256
n_heads = 4
n_kv_heads = 2
head_dim = 64
ffn_size = 512
vocab_size = 1000
"""


def steps(rows: str, header: str = HEADER) -> dict[str, str]:
    """A steps.csv holding `rows` under `header`."""
    return {"steps.csv": header + rows}


CASES = [
    # The measurement run: outputs.
    case("calibrate: no --out", RUN, "--out PROFILE.toml is required"),
    case("calibrate: --out not toml", f"{RUN} --out p.json", "name it something.toml"),
    case(
        "calibrate: --out is a directory",
        f"{RUN} --out d.toml",
        "--out d.toml: is a directory",
        files={"d.toml/keep": "x"},
    ),
    case("calibrate: --out in a missing directory", f"{RUN} --out no/p.toml", "directory no does"),
    case(
        "calibrate: --out under a missing /proc directory",
        f"{RUN} --out /proc/x/p.toml",
        "--out /proc/x/p.toml: directory /proc/x does not exist",
    ),
    case(
        "calibrate: --out replaces the --model file",
        f"{RUN} --model m.toml --out m.toml",
        "--out m.toml: is the same file as --model m.toml",
        files={"m.toml": MODEL_TOML},
    ),
    # The measurement run: shapes, dtypes, devices, datasheets.
    case("calibrate: --tp without --model", f"{RUN} --tp 2 --out p.toml", "give --model too"),
    case(
        "calibrate: --tp 0",
        f"{RUN} --model llama-3.1-8b --tp 0 --out p.toml",
        "0 is not in the range x>=1",
    ),
    case(
        "calibrate: --tp 3 does not shard llama's heads",
        f"{RUN} --model llama-3.1-8b --tp 3 --out p.toml",
        "tp = 3 does not divide llama-3.1-8b's 32 attention heads; choose one of 1, 2, 4, 8",
    ),
    case(
        "calibrate: --tp not an integer",
        f"{RUN} --model llama-3.1-8b --tp two --out p.toml",
        "'two' is not a valid integer",
    ),
    case(
        "calibrate: --device on the numpy backend",
        f"{RUN} --device 3 --out p.toml",
        "--device picks a GPU; --backend numpy measures the CPU",
    ),
    case("calibrate: --device -1", f"{RUN} --device -1 --out p.toml", "-1 is not in the range"),
    case("calibrate: unknown backend", f"{RUN} --backend tpu --out p.toml", "'tpu' is not one of"),
    case(
        "calibrate: --backend auto no longer falls back",
        "calibrate --backend auto --out p.toml",
        "'auto' is not one of 'cupy', 'numpy'",
    ),
    case("calibrate: fp16 on the CPU", f"{RUN} --dtype fp16 --out p.toml", "no half-precision"),
    case("calibrate: bf16 on the CPU", f"{RUN} --dtype bf16 --out p.toml", "NumPy has no bfloat16"),
    case("calibrate: unknown dtype", f"{RUN} --dtype int3 --out p.toml", "choose from fp32, fp64"),
    case(
        "calibrate: fp64 curve stored as fp32",
        f"{RUN} --dtype fp64,fp32 --out p.toml",
        "list fp32 first",
    ),
    case(
        "calibrate: dtype listed twice",
        f"{RUN} --dtype fp32,fp32 --out p.toml",
        "fp32 is listed twice",
    ),
    case("calibrate: empty dtype", f"{RUN} --dtype fp32, --out p.toml", "give one or more dtypes"),
    case("calibrate: unknown model", f"{RUN} --model nope --out p.toml", "unknown model"),
    case(
        "calibrate: garbled model file",
        f"{RUN} --model m.toml --out p.toml",
        "m.toml: not valid TOML",
        files={"m.toml": "not toml [["},
    ),
    case(
        "calibrate: a CPU against a GPU datasheet",
        f"{RUN} --gpu a100-80gb --out p.toml",
        "a CPU measurement is not compared with a GPU's datasheet",
    ),
    case(
        "calibrate: empty --name",
        ["calibrate", "--backend", "numpy", "--name", " ", "--out", "p.toml"],
        "--name is empty",
    ),
    case("calibrate: unknown option", f"{RUN} --bogus", "No such option '--bogus'"),
    case(
        "calibrate: a run option before fit-steps",
        "calibrate --quick fit-steps steps.csv --gpu a100-80gb --out p.toml",
        "--quick belongs to the measurement run, not to fit-steps",
    ),
    case(
        "calibrate: --gpu before fit-steps",
        "calibrate --gpu a100-80gb fit-steps steps.csv --out p.toml",
        "--gpu belongs to the measurement run, not to fit-steps",
    ),
    # fit-steps: the steps file.
    case(
        "calibrate fit-steps: missing steps file",
        FIT.replace("steps.csv", "no.csv") + " --out p.toml",
        "no.csv: steps file not found",
    ),  # fmt: skip
    case(
        "calibrate fit-steps: steps file is a directory",
        FIT.replace("steps.csv", "{run}") + " --out p.toml",
        "run: is a directory; give a .csv or .parquet steps file",
    ),
    case(
        "calibrate fit-steps: steps file is json",
        FIT.replace("steps.csv", "steps.json") + " --out p.toml",
        "a steps file is .csv or .parquet",
        files={"steps.json": "{}"},
    ),
    case(
        "calibrate fit-steps: garbled parquet",
        FIT.replace("steps.csv", "steps.parquet") + " --out p.toml",
        "steps.parquet: cannot read",
        files={"steps.parquet": b"PAR1 this is not parquet"},
    ),
    case(
        "calibrate fit-steps: empty csv",
        f"{FIT} --out p.toml",
        "steps.csv: cannot read",
        files={"steps.csv": ""},
    ),  # fmt: skip
    case(
        "calibrate fit-steps: binary garbage",
        f"{FIT} --out p.toml",
        "steps.csv: cannot read (invalid utf-8",
        files={"steps.csv": bytes(range(1, 256)) * 4},
    ),
    case(
        "calibrate fit-steps: not a steps log",
        f"{FIT} --out p.toml",
        "steps.csv: missing column 'prefill_tokens' (found: when, what",
        files={"steps.csv": "when,what\nmonday,lunch\n"},
    ),
    case(
        "calibrate fit-steps: header only", f"{FIT} --out p.toml", "no step rows", files=steps("")
    ),
    case(
        "calibrate fit-steps: no step_ms column",
        f"{FIT} --out p.toml",
        "missing column 'step_ms'",
        files=steps("0,4,400\n", "prefill_tokens,decode_seqs,decode_context_tokens\n"),
    ),
    case(
        "calibrate fit-steps: zero step time",
        f"{FIT} --out p.toml",
        "column 'step_ms', row 2: got 0.0, expected a time > 0 ms",
        files=steps("0,4,400,9.5\n0,8,800,0\n"),
    ),
    case(
        "calibrate fit-steps: step time not a number",
        f"{FIT} --out p.toml",
        "column 'step_ms' must be numeric",
        files=steps("0,4,400,fast\n"),
    ),
    case(
        "calibrate fit-steps: fractional prefill tokens",
        f"{FIT} --out p.toml",
        "column 'prefill_tokens', row 1: got 12.5, expected a whole token count >= 0",
        files=steps("12.5,0,0,9.5\n"),
    ),
    case(
        "calibrate fit-steps: negative decode sequences",
        f"{FIT} --out p.toml",
        "column 'decode_seqs', row 1: got -4",
        files=steps("0,-4,400,9.5\n"),
    ),
    case(
        "calibrate fit-steps: a step doing no work",
        f"{FIT} --out p.toml",
        "a step does some work",
        files=steps("0,0,0,9.5\n"),
    ),
    case(
        "calibrate fit-steps: tp column 0",
        f"{FIT} --out p.toml",
        "column 'tp', row 1: got 0, expected an integer >= 1",
        files=steps("0,4,400,9.5,0\n", HEADER.replace("\n", ",tp\n")),
    ),
    case(
        "calibrate fit-steps: no model anywhere",
        "calibrate fit-steps steps.csv --gpu a100-80gb --out p.toml",
        "no 'model' column; give the model setting",
        files=STEPS,
    ),
    case(
        "calibrate fit-steps: unknown model in the file",
        "calibrate fit-steps steps.csv --gpu a100-80gb --out p.toml",
        "unknown model 'gpt-9'",
        files=steps("gpt-9,0,4,400,9.5\n", "model," + HEADER),
    ),
    case(
        "calibrate fit-steps: model not in the file",
        "calibrate fit-steps steps.csv --gpu a100-80gb --model qwen3-32b --out p.toml",
        "no rows for model = qwen3-32b",
        files=steps("llama-3.1-8b,0,4,400,9.5\n", "model," + HEADER),
    ),
    # fit-steps: flags.
    case(
        "calibrate fit-steps: mapping to an unknown column",
        f"{FIT} --columns foo=bar --out p.toml",
        "'foo' is not one of",
        files=STEPS,
    ),
    case(
        "calibrate fit-steps: mapping from a missing column",
        f"{FIT} --columns step_ms=latency --out p.toml",
        "no column 'latency'",
        files=STEPS,
    ),
    case(
        "calibrate fit-steps: garbled mapping",
        f"{FIT} --columns step_ms --out p.toml",
        "'step_ms' is not OUTPUT=SOURCE",
        files=STEPS,
    ),
    case(
        "calibrate fit-steps: mapping a splitwise file",
        "calibrate fit-steps {shared}/measured/splitwise_a100_llama2_bloom.csv --gpu a100-80gb "
        "--columns step_ms=prompt_time --out p.toml",
        "a column mapping applies to the steps format",
    ),
    case(
        "calibrate fit-steps: unknown format",
        f"{FIT} --format csv --out p.toml",
        "'csv' is not one of",
        files=STEPS,
    ),  # fmt: skip
    case(
        "calibrate fit-steps: unknown gpu",
        f"{FIT} --gpu nope --out p.toml",
        "unknown GPU",
        files=STEPS,
    ),
    case(
        "calibrate fit-steps: garbled gpu profile",
        f"{FIT} --gpu g.toml --out p.toml",
        "g.toml: not valid TOML",
        files={**STEPS, "g.toml": "[[["},
    ),
    case(
        "calibrate fit-steps: unknown engine",
        f"{FIT} --engine nope --out p.toml",
        "unknown engine",
        files=STEPS,
    ),  # fmt: skip
    case(
        "calibrate fit-steps: --tp 0",
        f"{FIT} --tp 0 --out p.toml",
        "0 is not in the range",
        files=STEPS,
    ),
    case(
        "calibrate fit-steps: unknown dtype",
        f"{FIT} --dtype int3 --out p.toml",
        "'int3' is not one of",
        files=STEPS,
    ),  # fmt: skip
    case(
        "calibrate fit-steps: empty --name",
        [*FIT.split(), "--name", "", "--out", "p.toml"],
        "--name is empty",
        files=STEPS,
    ),
    case("calibrate fit-steps: no --out", FIT, "Missing option '--out'", files=STEPS),
    case(
        "calibrate fit-steps: --out not toml",
        f"{FIT} --out p.csv",
        "name it something.toml",
        files=STEPS,
    ),
    case(
        "calibrate fit-steps: --out in a missing directory",
        f"{FIT} --out no/p.toml",
        "directory no does not exist",
        files=STEPS,
    ),
    # fit-steps: outputs that would replace an input.
    case(
        "calibrate fit-steps: --out replaces the --gpu profile",
        "calibrate fit-steps steps.csv --gpu p.toml --model llama-3.1-8b --out p.toml",
        "--out p.toml: is the same file as --gpu p.toml",
        files={**STEPS, "p.toml": A100},
    ),
    case(
        "calibrate fit-steps: --out replaces the --gpu profile by another name",
        "calibrate fit-steps steps.csv --gpu p.toml --model llama-3.1-8b --out ./p.toml",
        "is the same file as --gpu p.toml",
        files={**STEPS, "p.toml": A100},
    ),
    case(
        "calibrate fit-steps: --out replaces the --engine preset",
        f"{FIT} --engine e.toml --out e.toml",
        "--out e.toml: is the same file as --engine e.toml",
        files={**STEPS, "e.toml": (PROFILES_DIR / "engines" / "vllm-v1.toml").read_text()},
    ),
    case(
        "calibrate fit-steps: the points file replaces the steps file",
        FIT.replace("steps.csv", "p.steps-fit.parquet") + " --out p.toml",
        "points file p.steps-fit.parquet: is the same file as STEPS p.steps-fit.parquet",
        files={"p.steps-fit.parquet": b"PAR1"},
    ),
]


# calibrate fit-runs: a measured-runs file with a bad run, unknown models, outputs.
RUNS = json.loads((SHARED_MEASURED / "vllm_h100_runs.json").read_text())
FIT_RUNS = "calibrate fit-runs runs.json --out fitted.toml"


def runs_file(change) -> dict[str, str]:
    """runs.json: the real measured runs with `change` applied to the first run."""
    doc = json.loads(json.dumps(RUNS))
    change(doc["runs"][0])
    return {"runs.json": json.dumps(doc)}


CASES += [
    case(
        "calibrate fit-runs: a run without its tp",
        FIT_RUNS,
        "run '17': field tp is missing",
        files=runs_file(lambda r: r.pop("tp")),
    ),
    case(
        "calibrate fit-runs: TTFT above E2E",
        FIT_RUNS,
        "run '17': field measured.stages[0].ttft_mean_ms = 9000.0 is above e2e_mean_ms",
        files=runs_file(lambda r: r["measured"]["stages"][0].update(ttft_mean_ms=9000.0)),
    ),
    case(
        "calibrate fit-runs: an unknown GPU",
        FIT_RUNS,
        "run '17': field gpu = 'TPUv9' is unknown",
        files=runs_file(lambda r: r.update(gpu="TPUv9")),
    ),
    case(
        "calibrate fit-runs: --train names a model with no runs",
        f"{FIT_RUNS} --train llama-9-huge",
        "--train: no runs of llama-9-huge",
        files=runs_file(lambda r: None),
    ),
    case(
        "calibrate fit-runs: an unknown base preset",
        f"{FIT_RUNS} --base vllm-v9",
        "unknown engine 'vllm-v9'",
        files=runs_file(lambda r: None),
    ),
    case(
        "calibrate fit-runs: --out is the runs file",
        "calibrate fit-runs runs.json --out runs.json",
        "--out runs.json: an engine preset is TOML, name it something.toml",
        files=runs_file(lambda r: None),
    ),
]

if Path("/proc/self").is_dir():  # a directory that refuses new files (root or not)
    CASES.append(
        case(
            "calibrate: --out in /proc",
            f"{RUN} --out /proc/p.toml",
            "--out /proc/p.toml: cannot create a file in /proc",
        )
    )

if importlib.util.find_spec("cupy") is None:  # without CuPy the GPU backend cannot start
    NO_GPU = (
        "no usable GPU: CuPy is not installed; install it with pip install 'tokenfleet[gpu]', "
        "or measure the CPU with --backend numpy"
    )
    CASES += [
        case(
            "calibrate: the default backend without CuPy", "calibrate --quick --out p.toml", NO_GPU
        ),  # fmt: skip
        case(
            "calibrate: --backend cupy without CuPy",
            "calibrate --backend cupy --out p.toml",
            NO_GPU,
        ),  # fmt: skip
        case("calibrate: --device 3 without CuPy", "calibrate --device 3 --out p.toml", NO_GPU),
        case(
            "calibrate: the README's GPU line without CuPy",
            "calibrate --quick --model llama-3.1-8b --out my-gpu.toml",
            NO_GPU,
        ),
    ]
