"""`tokenfleet steptime`: bad models, GPUs, values, and outputs that would replace an input."""

from bad_inputs import case

BASE = "steptime --model llama-3.1-8b --gpu h100-sxm"
MODEL_TOML = 'name = "m"\n'

CASES = [
    case("steptime: unknown model", "steptime --model nope --gpu h100-sxm", "unknown model"),
    case("steptime: unknown gpu", "steptime --model llama-3.1-8b --gpu nope", "unknown GPU"),
    case("steptime: tp not an integer", f"{BASE} --tp x", "'x' is not a valid integer"),
    case("steptime: negative price", f"{BASE} --usd-per-gpu-hour -1", "--usd-per-gpu-hour"),
    case("steptime: memory fraction 0", f"{BASE} --gpu-memory-utilization 0", "0<x<=1"),
    case("steptime: unknown dtype", f"{BASE} --dtype int3", "'int3' is not one of"),
    case("steptime: unknown option", f"{BASE} --bogus", "No such option '--bogus'"),
    case(
        "steptime: --json replaces the model file",
        "steptime --model m.toml --gpu h100-sxm --json m.toml",
        "--json m.toml: is the same file as --model m.toml",
        files={"m.toml": MODEL_TOML},
    ),
    case(
        "steptime: --json and --parquet are one file",
        f"{BASE} --json st.json --parquet st.json",
        "--json st.json: is the same file as --parquet st.json",
    ),
    case(
        "steptime: --parquet replaces the gpu profile",
        "steptime --model llama-3.1-8b --gpu p.toml --parquet ./p.toml",
        "is the same file as --gpu p.toml",
        files={"p.toml": "x"},
    ),
    case(
        "steptime: --json into a missing directory", f"{BASE} --json no/st.json", "does not exist"
    ),
]
