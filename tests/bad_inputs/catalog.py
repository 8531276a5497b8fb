"""`tokenfleet models`, `gpus`, `examples` and the group itself."""

from bad_inputs import case

FULL_MODEL = """name = "m"
n_layers = 32
hidden_size = 4096
n_heads = 32
n_kv_heads = 8
head_dim = 128
ffn_size = 14336
vocab_size = 128256
"""

CASES = [
    case("models: unknown model", "models show nope", "unknown model 'nope'"),
    case(
        "models: a file missing keys",
        "models show m.toml",
        "m.toml: missing key 'n_layers'",
        files={"m.toml": 'name = "m"\n'},
    ),
    case("models: missing file", "models show missing.toml", "missing.toml: model file not found"),
    case(
        "models: a config.json that is not JSON",
        "models show config.json",
        "config.json: not valid JSON",
        files={"config.json": "{not json"},
    ),
    case(
        "models: a config.json list",
        "models show config.json",
        "expected a JSON object",
        files={"config.json": "[1, 2]"},
    ),
    case(
        "models: a negative size in a model file",
        "models show m.toml",
        "must be an integer >= 0",
        files={"m.toml": FULL_MODEL.replace("n_layers = 32", "n_layers = -1")},
    ),
    case("models: unknown option", "models list --bogus", "No such option '--bogus'"),
    case("gpus: unknown gpu", "gpus show nope", "unknown GPU 'nope'"),
    case(
        "gpus: a file that is no profile",
        "gpus show p.toml",
        "p.toml: missing key 'format'",
        files={"p.toml": 'name = "p"\n'},
    ),
    case("gpus: missing profile file", "gpus show missing.toml", "missing.toml: file not found"),
    case("gpus: unknown subcommand", "gpus bogus", "No such command 'bogus'"),
    case("examples: unknown example", "examples copy nope", "unknown example 'nope'"),
    case("examples: no name", "examples copy", "Missing argument 'NAME'"),
    case(
        "examples: an existing destination",
        "examples copy model-lab {scenario}",
        "scenario.toml: already exists",
    ),
    case("tokenfleet: unknown command", "bogus", "No such command 'bogus'"),
]
