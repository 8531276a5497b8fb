"""The model catalog: published parameter counts, bytes, FLOPs, user model files, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenfleet.cli.main import cli
from tokenfleet.errors import UserError
from tokenfleet.hardware.profile import load_profile
from tokenfleet.models import get_model, list_models
from tokenfleet.perf.steptime import StepTime

# (model, published total, published active) from the model cards / papers. Publishers differ
# on whether "active" counts the embedding table: Mistral does, OpenAI and DeepSeek do not.
PUBLISHED_TOTAL = {
    "llama-3.1-8b": 8.03e9,
    "llama-3.1-70b": 70.6e9,
    "llama-3.3-70b": 70.6e9,
    "llama-3.1-405b": 405.9e9,  # 405B; the HF card's safetensors count is 405.85e9
    "llama-2-70b": 69.0e9,  # HF card: "69B params" (marketed as 70B)
    "qwen3-32b": 32.8e9,
    "mixtral-8x7b": 46.7e9,
    "deepseek-v3": 671e9,
    "gpt-oss-120b": 116.83e9,
    "bloom-176b": 176_247_271_424,  # the BLOOM model card's exact count
    # the models of ../shared/data/measured/vllm_h100_runs.json
    "llama-2-7b": 6.74e9,
    "codellama-34b": 33.7e9,
    "mistral-nemo-12b": 12.2e9,
    "qwen2.5-7b": 7.61e9,  # Qwen's card: 7.61B
    "yi-34b": 34.4e9,
    "llama-4-scout": 108e9,  # the text model; Meta's 109B adds the vision encoder
}


@pytest.mark.parametrize(("name", "total"), sorted(PUBLISHED_TOTAL.items()))
def test_total_parameters_match_the_published_counts(name: str, total: float) -> None:
    assert get_model(name).params_total == pytest.approx(total, rel=0.01)


def test_every_built_in_has_a_published_count() -> None:
    assert sorted(PUBLISHED_TOTAL) == list_models()


def test_active_parameters_match_the_published_counts() -> None:
    assert get_model("gpt-oss-120b").params_active == pytest.approx(5.13e9, rel=0.01)
    mixtral = get_model("mixtral-8x7b")  # Mistral's 12.9B counts the embedding table
    assert mixtral.params_active + mixtral.embedding_params == pytest.approx(12.9e9, rel=0.01)
    # DeepSeek's "37B" is 36.6B rounded to two digits (1.0% away); the test allows that rounding.
    assert get_model("deepseek-v3").params_active == pytest.approx(37e9, rel=0.0125)
    for name in ("llama-3.1-8b", "qwen3-32b", "bloom-176b"):  # dense: all but the embedding
        spec = get_model(name)
        embedding = 0 if spec.tied_embeddings else spec.embedding_params
        assert spec.params_active == spec.params_total - embedding


def test_kv_cache_bytes_per_token_for_gqa_mha_and_mla() -> None:
    # GQA: layers x (K and V) x kv heads x head dim x 2 bytes: Llama-3 8B's well-known 128 KiB.
    assert get_model("llama-3.1-8b").kv_bytes_per_token("bf16") == 128 * 1024
    # MLA caches one 512-wide latent plus a 64-wide RoPE key per layer (DeepSeek-V2 paper).
    assert get_model("deepseek-v3").kv_bytes_per_token("bf16") == 61 * (512 + 64) * 2
    # BLOOM's full multi-head attention: 14336 x 2 x 70 layers x 2 bytes, ~4 MB per token.
    assert get_model("bloom-176b").kv_bytes_per_token("fp16") == 70 * 2 * 14336 * 2
    assert get_model("llama-3.1-70b").kv_bytes_per_token("fp8") == pytest.approx(
        get_model("llama-3.1-70b").kv_bytes_per_token("bf16") / 2
    )


@pytest.mark.parametrize("name", ["llama-3.1-70b", "deepseek-v3", "mixtral-8x7b"])
def test_fp8_halves_and_fp4_quarters_the_linear_weights(name: str) -> None:
    spec = get_model(name)
    bf16, fp8, fp4 = (spec.weight_bytes(d) for d in ("bf16", "fp8", "fp4"))
    assert 0.5 < fp8 / bf16 < 0.53  # embeddings and norms stay 16-bit
    assert 0.25 < fp4 / bf16 < 0.29  # plus one 8-bit scale per 32 weights


def test_flops_per_token_are_twice_the_active_matrices() -> None:
    spec = get_model("llama-3.1-8b")
    assert spec.flops_per_token_dense == pytest.approx(2 * spec.params_active, rel=0.001)
    moe = get_model("deepseek-v3")
    assert moe.flops_per_token_dense == pytest.approx(2 * moe.params_active, rel=0.01)


def attn_flops(spec, context: int) -> float:
    """Attention FLOPs of one new token over `context` earlier ones, as StepTime builds them."""
    return spec.attn_flops_per_pair() * spec.effective_pairs_fraction(context) * context


@given(st.integers(1, 200_000))
def test_attention_flops_grow_with_context_and_sliding_windows_cap_them(context: int) -> None:
    dense = get_model("llama-3.1-8b")
    assert attn_flops(dense, context + 1) > attn_flops(dense, context)
    oss = get_model("gpt-oss-120b")  # half its layers see only the last 128 tokens
    full_only = oss.attn_flops_per_pair() * context / 2
    assert full_only <= attn_flops(oss, context) <= oss.attn_flops_per_pair() * context


MOE_STEP = StepTime(get_model("deepseek-v3"), load_profile("h200"), tp=8, dtype="fp8")


@given(st.integers(1, 100_000))
def test_a_moe_step_reads_more_experts_with_more_tokens_up_to_all(tokens: int) -> None:
    """Expected experts touched, E (1 - (1 - k/E)^N): a larger batch reads no fewer expert
    weights, and never more than all of them."""
    read = MOE_STEP.decode_gemm_s(tokens)[1]
    assert MOE_STEP.decode_gemm_s(1)[1] <= read <= MOE_STEP.decode_gemm_s(tokens + 1)[1]
    assert read <= MOE_STEP.decode_gemm_s(10**9)[1]


LLAMA_31_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-05,
    "torch_dtype": "bfloat16",
}
DEEPSEEK_V3_CONFIG = {
    "model_type": "deepseek_v3",
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "num_experts_per_tok": 8,
    "first_k_dense_replace": 3,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "vocab_size": 129280,
    "tie_word_embeddings": False,
}
GPT_OSS_120B_CONFIG = {
    "model_type": "gpt_oss",
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "num_hidden_layers": 36,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "num_local_experts": 128,
    "experts_per_token": 4,
    "vocab_size": 201088,
    "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"] * 18,
    "attention_bias": True,
    "tie_word_embeddings": False,
}


@pytest.mark.parametrize(
    ("config", "builtin"),
    [
        (LLAMA_31_8B_CONFIG, "llama-3.1-8b"),
        (DEEPSEEK_V3_CONFIG, "deepseek-v3"),
        (GPT_OSS_120B_CONFIG, "gpt-oss-120b"),
    ],
)
def test_a_local_hf_config_gives_the_built_in_figures(tmp_path: Path, config, builtin) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    for source in (str(path), str(tmp_path)):  # the file or its folder
        spec, ref = get_model(source), get_model(builtin)
        assert spec.params_total == ref.params_total
        assert spec.params_active == ref.params_active
        assert spec.kv_bytes_per_token() == ref.kv_bytes_per_token()


# meta-llama/Llama-4-Scout-17B-16E-Instruct config.json: the language model under text_config.
LLAMA_4_SCOUT_CONFIG = {
    "model_type": "llama4",
    "architectures": ["Llama4ForConditionalGeneration"],
    "text_config": {
        "model_type": "llama4_text",
        "hidden_size": 5120,
        "intermediate_size": 8192,
        "intermediate_size_mlp": 16384,
        "num_hidden_layers": 48,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "num_local_experts": 16,
        "num_experts_per_tok": 1,
        "interleave_moe_layer_step": 1,
        "vocab_size": 202048,
        "max_position_embeddings": 10485760,
        "tie_word_embeddings": False,
    },
    "vision_config": {"model_type": "llama4_vision_model", "hidden_size": 1408},
}


def test_a_nested_llama_4_config_gives_the_built_in(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA_4_SCOUT_CONFIG))
    spec, ref = get_model(str(path)), get_model("llama-4-scout")
    assert spec.params_total == ref.params_total
    assert spec.params_active == ref.params_active
    assert spec.kv_bytes_per_token() == ref.kv_bytes_per_token()
    # Meta's "17B active" counts the embedding table
    assert spec.params_active + spec.embedding_params == pytest.approx(17.2e9, rel=0.01)


def test_interleaved_llama_4_layers_are_half_dense_at_step_2(tmp_path: Path) -> None:
    config = json.loads(json.dumps(LLAMA_4_SCOUT_CONFIG))
    config["text_config"]["interleave_moe_layer_step"] = 2
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    spec = get_model(str(path))
    assert (spec.n_moe_layers, spec.n_dense_ffn_layers, spec.ffn_size) == (24, 24, 16384)


def test_bloom_config_json_with_its_n_embed_key_gives_the_built_in(tmp_path: Path) -> None:
    # bigscience/bloom's config.json names the width "n_embed" and has no tie/bias keys.
    config = {"model_type": "bloom", "n_embed": 14336, "n_layer": 70,
              "num_attention_heads": 112, "vocab_size": 250880}  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    spec, ref = get_model(str(path)), get_model("bloom-176b")
    assert spec.params_total == ref.params_total == 176_247_271_424
    assert spec.kv_bytes_per_token() == ref.kv_bytes_per_token()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_attention_heads": 0}, "key 'n_heads' must be > 0"),
        ({"hidden_size": "4096"}, "key 'hidden_size' must be an integer >= 0, got '4096'"),
        ({"num_hidden_layers": 1.5}, "key 'num_hidden_layers' must be an integer >= 0"),
    ],
)
def test_a_config_json_with_a_bad_value_is_one_line(tmp_path, runner, change, message) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA_31_8B_CONFIG | change))
    result = runner.invoke(cli, ["models", "show", str(path)])
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1


@pytest.mark.parametrize("name", ["bad.toml", "config.json"])
def test_a_model_file_that_is_not_text_is_one_line(tmp_path, runner, name) -> None:
    path = tmp_path / name
    path.write_bytes(b"\xff\xfe\x00binary")
    result = runner.invoke(cli, ["models", "show", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {path}: not valid")


def test_a_user_toml_model_loads_and_drives_steptime(tmp_path: Path, runner) -> None:
    text = (Path(__file__).parents[1] / "tokenfleet/models/catalog/llama-3.1-8b.toml").read_text()
    path = tmp_path / "my-model.toml"
    path.write_text(text.replace('name = "llama-3.1-8b"', 'name = "my-model"'))
    assert get_model(str(path)).params_total == get_model("llama-3.1-8b").params_total
    result = runner.invoke(cli, ["steptime", "--model", str(path), "--gpu", "l40s"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("my-model on 1 x l40s")


def test_unknown_model_lists_the_known_ones(runner) -> None:
    result = runner.invoke(cli, ["models", "show", "llama-9"])
    assert result.exit_code == 2
    assert "unknown model 'llama-9'" in result.output
    assert all(name in result.output for name in list_models())


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('name = "x"\nn_layers = 2\nhidden = 8\n', "hidden"),  # unknown key
        ('name = "x"\nn_layers = 2\n', "hidden_size"),  # missing key
        (
            'name = "x"\nn_layers = "two"\nhidden_size = 8\nn_heads = 2\nn_kv_heads = 2\n'
            "head_dim = 4\nffn_size = 16\nvocab_size = 10\n",
            "n_layers",
        ),
        ("name = [\n", "not valid TOML"),
    ],
)
def test_a_malformed_model_file_is_refused_naming_the_key(tmp_path, runner, text, key) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = runner.invoke(cli, ["models", "show", str(path)])
    assert result.exit_code == 2
    assert key in result.output
    assert result.output.count("\n") == 1  # one line


def test_a_config_json_without_layers_names_the_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({k: v for k, v in LLAMA_31_8B_CONFIG.items() if k != "num_hidden_layers"})
    )
    with pytest.raises(UserError, match="num_hidden_layers"):
        get_model(str(path))


def test_models_list_and_show_json_carry_the_printed_figures(runner) -> None:
    listed = json.loads(runner.invoke(cli, ["models", "list", "--json"]).output)
    assert [m["name"] for m in listed] == list_models()
    shown = json.loads(runner.invoke(cli, ["models", "show", "mixtral-8x7b", "--json"]).output)
    assert shown["n_experts"] == 8
    assert shown["params_total"] == get_model("mixtral-8x7b").params_total
    table = runner.invoke(cli, ["models", "list"]).output
    assert "46.70" in table.splitlines()[list_models().index("mixtral-8x7b") + 1]
