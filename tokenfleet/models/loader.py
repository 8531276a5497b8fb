"""Where ModelSpecs come from: the built-in catalog, a user's TOML file, or a local HF config.json.

Built-ins are TOML files in models/catalog/ in the same format a user writes, so copying one is
the way to add a model. A Hugging Face `config.json` is read from disk only (never downloaded).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from tokenfleet.errors import UserError
from tokenfleet.models.spec import ModelSpec
from tokenfleet.tomlfile import read_toml

CATALOG_DIR = Path(__file__).parent / "catalog"
_FIELDS = {f.name: f for f in fields(ModelSpec)}
_REQUIRED = [f.name for f in fields(ModelSpec) if f.default is MISSING]


def list_models() -> list[str]:
    """Names of the built-in models."""
    return sorted(p.stem for p in CATALOG_DIR.glob("*.toml"))


def get_model(name_or_path: str) -> ModelSpec:
    """A built-in model by name (case-insensitive) or a model file (.toml, HF config.json)."""
    path = Path(name_or_path)
    local = path.is_file() or (path / "config.json").is_file()  # a file or an HF model folder
    if name_or_path.endswith((".toml", ".json")) or "/" in name_or_path or local:
        if path.is_dir() and (path / "config.json").is_file():
            path = path / "config.json"
        if path.is_dir():
            raise UserError(f"{path}: is a directory without a config.json; give a model file")
        if not path.is_file():
            raise UserError(f"{path}: model file not found")
        if path.suffix == ".json":
            spec = spec_from_hf_config(_read_json(path), path)
            generation = path.with_name("generation_config.json")
            if generation.is_file():
                filtered = filters_sampling(_read_json(generation), generation)
                spec = dataclasses.replace(spec, filtered_sampling=filtered)
            return spec
        return spec_from_table(read_toml(path), str(path))
    name = name_or_path.lower()
    if name not in list_models():
        raise UserError(
            f"unknown model {name_or_path!r}; known: {', '.join(list_models())} "
            "(or pass a model .toml or a local config.json)"
        )
    path = CATALOG_DIR / f"{name}.toml"
    return spec_from_table(read_toml(path), str(path))


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a JSON object (a Hugging Face config.json)")
    return doc


def spec_from_table(table: dict[str, Any], where: str) -> ModelSpec:
    """A ModelSpec from a TOML table whose keys are ModelSpec fields; names a bad key."""
    for key in table:
        if key not in _FIELDS:
            raise UserError(f"{where}: unknown key {key!r}; model keys are {', '.join(_FIELDS)}")
    for key in _REQUIRED:
        if key not in table:
            raise UserError(f"{where}: missing key {key!r}")
    values = {}
    for key, value in table.items():
        kind = _FIELDS[key].type
        if kind == "str":
            ok = isinstance(value, str)
        elif kind == "bool":
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        if not ok:
            expected = {"str": "a string", "bool": "true or false"}.get(kind, "an integer >= 0")
            raise UserError(f"{where}: key {key!r} must be {expected}, got {value!r}")
        values[key] = value
    try:
        return ModelSpec(**values)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


def filters_sampling(doc: dict[str, Any], where: Path) -> bool:
    """Whether a Hugging Face generation_config.json asks for top-p or top-k filtering (the
    sampling vLLM applies by default to requests that set none), read as vLLM reads it
    (vllm/config/model.py get_diff_sampling_param: only the keys present count, `do_sample`
    is not read)."""
    top_p, top_k = doc.get("top_p", 1.0), doc.get("top_k", 0)
    for key, value in (("top_p", top_p), ("top_k", top_k)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{where}: key {key!r} must be a number, got {value!r}")
    return top_p < 1.0 or top_k > 0


def _hf(doc: dict, where: Path, *keys: str, default: int | None = None) -> int:
    """The first of `keys` present in a HF config (their names differ between families); every
    key read this way is a size or a count, so anything but a whole number >= 0 is refused
    here, before arithmetic on it could fail with a traceback."""
    for key in keys:
        value = doc.get(key)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UserError(f"{where}: key {key!r} must be an integer >= 0, got {value!r}")
            return value
    if default is None:
        raise UserError(f"{where}: config.json has no {' / '.join(keys)} key")
    return default


def spec_from_hf_config(doc: dict[str, Any], where: Path) -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json (Llama 2-4, Mistral, Mixtral, Qwen2/3,
    DeepSeek V2/V3, gpt-oss, BLOOM and look-alikes). A multimodal config (Llama 4) nests the
    language model under `text_config`: that is the model read."""
    name = str(doc.get("_name_or_path") or where.parent.name or doc.get("model_type") or "model")
    text = doc.get("text_config")
    if isinstance(text, dict) and not any(k in doc for k in ("hidden_size", "n_embed", "d_model")):
        doc = text
    model_type = str(doc.get("model_type", ""))
    hidden = _hf(doc, where, "hidden_size", "n_embed", "n_embd", "d_model")
    heads = _hf(doc, where, "num_attention_heads", "n_head")
    is_bloom = model_type == "bloom"
    values: dict[str, Any] = {
        "name": name,
        "description": f"from {where} (model_type {model_type or 'unknown'})",
        "n_layers": _hf(doc, where, "num_hidden_layers", "n_layer"),
        "hidden_size": hidden,
        "n_heads": heads,
        "n_kv_heads": _hf(doc, where, "num_key_value_heads", default=heads),
        "head_dim": _hf(doc, where, "head_dim", default=hidden // heads if heads else 0),
        "ffn_size": _hf(doc, where, "intermediate_size", "ffn_hidden_size", default=4 * hidden),
        "vocab_size": _hf(doc, where, "vocab_size"),
        "tied_embeddings": bool(doc.get("tie_word_embeddings", is_bloom)),
        "qkv_bias": bool(doc.get("attention_bias", False) or model_type == "qwen2" or is_bloom),
        "out_bias": bool(doc.get("attention_bias", False) or is_bloom),
        "qk_norm": model_type in ("qwen3", "qwen3_moe"),
        "max_position_embeddings": _hf(
            doc, where, "max_position_embeddings", "n_positions", "seq_length", default=0
        ),
    }
    if is_bloom:
        values.update(gated_ffn=False, ffn_bias=True, norm_bias=True, embed_norm=True)
    experts = _hf(doc, where, "num_local_experts", "n_routed_experts", "num_experts", default=0)
    if experts:
        values.update(
            n_experts=experts,
            experts_per_token=_hf(doc, where, "num_experts_per_tok", "experts_per_token"),
            expert_ffn_size=_hf(
                doc, where, "moe_intermediate_size", "intermediate_size", default=0
            ),
            n_shared_experts=doc.get("n_shared_experts") or 0,
            first_dense_layers=doc.get("first_k_dense_replace") or 0,
            router_bias=model_type in ("deepseek_v3", "gpt_oss"),
        )
    if model_type == "gpt_oss":
        values.update(ffn_bias=True, attn_sinks=True)
    if model_type in ("llama4", "llama4_text") and experts:
        # transformers' Llama4TextConfig: MoE layers every interleave_moe_layer_step (the
        # others dense, of intermediate_size_mlp), each with one shared expert. The dense
        # ones are counted as leading layers: for the cost only their number matters.
        step = _hf(doc, where, "interleave_moe_layer_step", default=1) or 1
        values.update(
            ffn_size=_hf(doc, where, "intermediate_size_mlp", default=values["ffn_size"]),
            n_shared_experts=1,
            first_dense_layers=values["n_layers"] - values["n_layers"] // step,
        )
    if doc.get("kv_lora_rank"):
        nope = _hf(doc, where, "qk_nope_head_dim")
        rope = _hf(doc, where, "qk_rope_head_dim")
        values.update(
            q_lora_rank=doc.get("q_lora_rank") or 0,
            kv_lora_rank=doc["kv_lora_rank"],
            qk_nope_head_dim=nope,
            qk_rope_head_dim=rope,
            v_head_dim=_hf(doc, where, "v_head_dim"),
            head_dim=nope + rope,
        )
    layer_types = doc.get("layer_types")
    if isinstance(layer_types, list) and "sliding_attention" in layer_types:
        values.update(
            sliding_window=_hf(doc, where, "sliding_window"),
            sliding_layers=layer_types.count("sliding_attention"),
        )
    return spec_from_table(values, str(where))
