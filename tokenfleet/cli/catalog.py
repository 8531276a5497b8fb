"""`tokenfleet models list/show` and `tokenfleet gpus list/show`: what the built-ins hold."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead.")


def _model_facts(spec) -> dict:
    """Derived figures of a model, for tables and JSON."""
    return {
        "params_total": spec.params_total,
        "params_active": spec.params_active,
        "weight_bytes_bf16": spec.weight_bytes("bf16"),
        "weight_bytes_fp8": spec.weight_bytes("fp8"),
        "weight_bytes_fp4": spec.weight_bytes("fp4"),
        "kv_bytes_per_token_bf16": spec.kv_bytes_per_token("bf16"),
        "flops_per_token_dense": spec.flops_per_token_dense,
        "attn_flops_per_pair_prefill": spec.attn_flops_per_pair(decode=False),
        "attn_flops_per_pair_decode": spec.attn_flops_per_pair(decode=True),
    }


@click.group()
def models() -> None:
    """The LLM architecture catalog (built-ins, or your .toml / local config.json)."""


@models.command("list")
@json_option
def models_list(as_json: bool) -> None:
    """Built-in models with parameters, weight and KV-cache sizes."""
    from tokenfleet.models import get_model, list_models

    specs = [get_model(name) for name in list_models()]
    if as_json:
        click.echo(json.dumps([{"name": s.name, **_model_facts(s)} for s in specs], indent=1))
        return
    click.echo(
        f"{'model':16} {'params_B':>9} {'active_B':>9} {'layers':>6} {'hidden':>6} "
        f"{'heads/kv':>8} {'experts':>8} {'bf16_GiB':>8} {'kv_KB/token':>11}"
    )
    for s in specs:
        experts = f"{s.experts_per_token}/{s.n_experts}" if s.is_moe else "-"
        kv = f"{s.kv_bytes_per_token('bf16') / 1e3:,.1f}" + (" MLA" if s.is_mla else "")
        click.echo(
            f"{s.name:16} {s.params_total / 1e9:>9.2f} {s.params_active / 1e9:>9.2f} "
            f"{s.n_layers:>6} {s.hidden_size:>6} {f'{s.n_heads}/{s.n_kv_heads}':>8} "
            f"{experts:>8} {s.weight_bytes('bf16') / 2**30:>8.1f} {kv:>11}"
        )


@models.command("show")
@click.argument("name_or_path")
@json_option
def models_show(name_or_path: str, as_json: bool) -> None:
    """One model's configuration and derived figures."""
    from tokenfleet.models import get_model

    spec = get_model(name_or_path)
    doc = {**asdict(spec), **_model_facts(spec)}
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    for key, value in doc.items():
        if isinstance(value, float):
            value = f"{value:,.6g}"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        click.echo(f"{key:28} {value}")


@click.group()
def gpus() -> None:
    """Hardware profiles (built-ins, or a profile .toml) and engine presets."""


@gpus.command("list")
@json_option
def gpus_list(as_json: bool) -> None:
    """Built-in GPU profiles (datasheet peaks) and engine presets."""
    from tokenfleet.hardware.profile import list_engines, list_profiles, load_engine, load_profile

    profiles = [load_profile(name) for name in list_profiles()]
    engines = {name: load_engine(name) for name in list_engines()}
    if as_json:
        doc = {
            "gpus": [_profile_doc(p) for p in profiles],
            "engines": [asdict(e) for name, e in engines.items() if name == e.name],
        }
        click.echo(json.dumps(doc, indent=1))
        return
    click.echo(
        f"{'gpu':10} {'bf16_TF':>8} {'fp8_TF':>8} {'fp4_TF':>8} {'mem_GiB':>7} {'TB/s':>6} "
        f"{'link_GB/s':>9} {'TDP_W':>6}"
    )
    for p in profiles:
        click.echo(
            f"{p.name:10} {p.peak_tflops_bf16:>8,.0f} {_tflops(p.peak_tflops_fp8):>8} "
            f"{_tflops(p.peak_tflops_fp4):>8} {p.hbm_gb:>7.0f} {p.hbm_tb_s:>6.2f} "
            f"{p.link_gb_s:>9,.0f} {p.tdp_w:>6,.0f}"
        )
    click.echo("\nengine presets (--engine): " + ", ".join(engines))


def _tflops(value: float) -> str:
    return f"{value:,.0f}" if value else "-"


def _profile_doc(profile) -> dict:
    from tokenfleet.hardware.profile import profile_to_table

    return profile_to_table(profile)


@gpus.command("show")
@click.argument("name_or_path")
@json_option
def gpus_show(name_or_path: str, as_json: bool) -> None:
    """One GPU profile: datasheet, coefficients, its default engine's overheads, and what each
    engine preset was fitted to with its error there."""
    from tokenfleet.hardware.profile import (
        PROVENANCE_KEYS,
        builtin_engines,
        load_engine,
        load_profile,
    )

    profile = load_profile(name_or_path)
    doc = _profile_doc(profile)
    engine = load_engine(profile.default_engine, profile)
    doc["default_engine_preset"] = asdict(engine)
    presets = {p.name: p for p in (engine, *builtin_engines())}
    doc["engine_presets"] = {
        name: {k: getattr(p, k) or "-" for k in PROVENANCE_KEYS} for name, p in presets.items()
    }
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    click.echo(f"{profile.name}: {profile.description}")
    for section in ("datasheet", "coefficients"):
        click.echo(f"[{section}]")
        for key, value in doc[section].items():
            click.echo(f"  {key:22} {value:g}")
    click.echo(f"[engine {engine.name}] (default; other presets with --engine)")
    for key, value in asdict(engine).items():
        if key not in ("name", "description", "aliases", *PROVENANCE_KEYS):
            click.echo(f"  {key:22} {value}")
    click.echo("[engine presets] what each was fitted to, and its error there")
    for name, provenance in doc["engine_presets"].items():
        click.echo(f"  {name}: fitted to: {provenance['fitted_to']}")
        click.echo(f"  {'':{len(name)}}  error there: {provenance['fit_error']}")
