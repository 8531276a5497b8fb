"""`tokenfleet calibrate`: measure this machine into a hardware profile, or `calibrate
fit-steps`: fit an engine's overheads to its measured step times. Parse, call, print."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

from tokenfleet.cli.options import progress_enabled, quiet_option
from tokenfleet.errors import UserError, notify

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")

# Options of the measurement run (they must not precede `fit-steps`).
_RUN_OPTIONS = (
    "backend", "device", "model", "tp", "dtypes", "base", "name", "quick", "accept_poor_fit", "out"
)  # fmt: skip


@click.group(invoke_without_command=True)
@click.option(
    "--backend",
    type=click.Choice(["cupy", "numpy"]),
    default="cupy",
    show_default=True,
    help="cupy: a CUDA GPU (without one: an error, never the CPU); numpy: the CPU, labelled so.",
)
@click.option(
    "--device", type=click.IntRange(min=0), default=0, show_default=True, help="GPU index (cupy)."
)
@click.option(
    "--model", default=None, help="Sweep this model's layer GEMM shapes (default: squares)."
)
@click.option(
    "--tp",
    type=click.IntRange(min=1),
    default=None,
    help="Tensor parallelism for --model's shapes (it must divide the attention heads).",
)
@click.option(
    "--dtype",
    "dtypes",
    default=None,
    metavar="D[,D...]",
    help="GEMM dtypes; the first gives the profile's curve. GPU: bf16, fp16, fp32 "
    "(default bf16); CPU: fp32, fp64 (default fp32).",
)
@click.option(
    "--gpu",
    "base",
    default=None,
    help="Built-in profile (or .toml) whose datasheet peaks to compare against "
    "(default: the one matching the device name; GPU only).",
)
@click.option("--name", default=None, help="Profile name (default: measured-<device>).")
@click.option("--quick", is_flag=True, help="Fewer sizes and repeats: well under a minute.")
@click.option(
    "--accept-poor-fit",
    is_flag=True,
    help="Write the profile even if a fit's R² is below the threshold (with a warning).",
)
@click.option("--out", type=click.Path(), help="Profile TOML to write (required unless fit-steps).")
@json_option
@quiet_option
@click.pass_context
def calibrate(
    ctx, backend, device, model, tp, dtypes, base, name, quick, accept_poor_fit, out, as_json, quiet
):
    """Measure this machine's GPU (or, with --backend numpy, its CPU) and write a hardware
    profile TOML with the raw measurements beside it as <out>.measurements.parquet."""
    given = [p for p in _RUN_OPTIONS if ctx.get_parameter_source(p).name != "DEFAULT"]
    if ctx.invoked_subcommand is not None:
        if given:
            raise click.UsageError(
                f"--{_flag(given[0])} belongs to the measurement run, not to "
                f"{ctx.invoked_subcommand}; put the subcommand's options after it"
            )
        return
    if out is None:
        raise click.UsageError("--out PROFILE.toml is required")
    if tp is not None and model is None:
        raise click.UsageError("--tp shards --model's layer shapes; give --model too")
    if backend == "numpy" and "device" in given:
        raise click.UsageError("--device picks a GPU; --backend numpy measures the CPU, drop it")
    if name is not None and not name.strip():
        raise click.UsageError("--name is empty; give the profile a name, or leave --name out")
    from tokenfleet.atomic import refuse_clobber
    from tokenfleet.calibrate.backends import NoUsableGpu, open_backend
    from tokenfleet.calibrate.calibration import (
        MIN_FIT_R2,
        build_calibration,
        table_path,
        write_calibration,
    )
    from tokenfleet.calibrate.datasheet import choose_datasheet
    from tokenfleet.calibrate.microbench import (
        model_gemm_shapes,
        plan_benchmarks,
        run_microbenchmarks,
    )

    _check_writable(out)
    refuse_clobber(
        {"--out": out, "measurements": table_path(out, "measurements")},
        {"--model": model, "--gpu": base},
    )
    dtype_list = _dtype_list(dtypes)
    shapes = None
    if model is not None:
        from tokenfleet.models import get_model

        shapes = model_gemm_shapes(get_model(model), tp or 1)
    try:
        chosen = open_backend(backend, device)
    except NoUsableGpu as err:
        raise UserError(err.message("--backend numpy")) from None
    plan = plan_benchmarks(chosen, quick=quick, dtypes=dtype_list, shapes=shapes)
    datasheet = choose_datasheet(chosen.info, base)
    result = run_microbenchmarks(chosen, plan, progress=progress_enabled(quiet))
    settings = {"model": model, "tp": tp, "dtypes": list(plan.dtypes)}
    settings["device"] = device if backend == "cupy" else None  # a CPU has no device index
    cal = build_calibration(
        chosen.info,
        result,
        datasheet,
        name=name,
        quick=quick,
        settings={k: v for k, v in settings.items() if v is not None},
    )
    if cal.poor_fits:
        poor = "; ".join(cal.poor_fits)
        if not accept_poor_fit:
            raise UserError(
                f"poor fit, nothing written: {poor}, below R² {MIN_FIT_R2}; the measurements do "
                "not follow the curve (was the device busy?): rerun, or write it anyway with "
                "--accept-poor-fit"
            )
        notify(f"{out}: written with a poor fit ({poor}, below R² {MIN_FIT_R2}), as asked")
    try:
        measurements = write_calibration(cal, out)
    except OSError as err:
        raise UserError(
            f"--out {out}: cannot write ({err.strerror or err}); choose another path"
        ) from None
    summary = {
        **cal.summary,
        "wall_s": result.wall_s,
        "peak_memory_bytes": chosen.peak_memory_bytes(),
        "profile_file": str(out),
        "measurements_file": str(measurements),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    _print_calibration(summary)


def _flag(param: str) -> str:
    """The command-line spelling of a run option's parameter name."""
    return {"dtypes": "dtype", "base": "gpu"}.get(param, param).replace("_", "-")


def _dtype_list(dtypes: str | None) -> tuple[str, ...] | None:
    """--dtype's comma-separated list (None: the backend's default)."""
    if dtypes is None:
        return None
    listed = tuple(d.strip() for d in dtypes.split(","))
    if not all(listed):
        raise click.UsageError(
            f"--dtype {dtypes!r}: give one or more dtypes separated by commas, e.g. bf16,fp16"
        )
    return listed


def _check_writable(out: str | Path, kind: str = "a profile") -> None:
    """Refuse an output path before minutes of benchmarking, not after: a file is created and
    removed in its directory, since a directory may look writable and refuse files (/proc)."""
    out = Path(out)
    if out.suffix != ".toml":
        raise UserError(f"--out {out}: {kind} is TOML, name it something.toml")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"--out {out}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise UserError(f"--out {out}: directory {parent} is not writable; choose another path")
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory; give a file name ending in .toml")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{out.name}.probe-"):
            pass
    except OSError as err:
        raise UserError(
            f"--out {out}: cannot create a file in {parent} ({err.strerror or err}); "
            "choose another path"
        ) from None


def _print_calibration(s: dict) -> None:
    kind = "CPU measurement, not a GPU" if s["kind"] == "cpu" else "GPU measurement"
    click.echo(
        f"{s['device']} ({s['backend']} backend; {kind}) in {s['wall_s']:.1f} s, "
        f"peak memory {s['peak_memory_bytes'] / 1e9:.2f} GB"
    )
    click.echo(f"datasheet: {s['datasheet_source']}")
    click.echo("")
    click.echo(f"{'figure':<22}{'measured':>12}{'datasheet':>12}{'ratio':>8}")
    for peak in s["peaks"]:
        sheet = peak["datasheet"]
        ratio = f"{peak['measured'] / sheet:.2f}" if sheet else "-"
        sheet_text = f"{sheet:.4g}" if sheet else "-"
        click.echo(f"{peak['figure']:<22}{peak['measured']:>12.4g}{sheet_text:>12}{ratio:>8}")
    for key in ("write_gb_s", "copy_gb_s", "kernel_launch_us"):
        if key in s["measured"]:
            label = key.replace("_gb_s", " GB/s").replace("kernel_launch_us", "launch us")
            click.echo(f"{label:<22}{s['measured'][key]:>12.4g}{'-':>12}{'-':>8}")
    click.echo("")
    click.echo(f"{'coefficient':<22}{'value':>12}  source")
    for key, c in s["coefficients"].items():
        click.echo(f"{key:<22}{c['value']:>12.4g}  {c['source']}")
    click.echo("")
    click.echo(f"{'fit':<22}{'R2 (log t)':>12}{'max resid':>12}{'median':>10}{'points':>8}")
    for key, f in s["fit"].items():
        click.echo(
            f"{key:<22}{f['r2']:>12.4f}{f['max_residual']:>11.1%} {f['median_residual']:>9.1%}"
            f"{f['points']:>8}"
        )
    for note in s["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"wrote {s['profile_file']} and {Path(s['measurements_file']).name}")


@calibrate.command("fit-steps")
@click.argument("steps", type=click.Path())
@click.option("--gpu", required=True, help="Base hardware profile: a built-in name or a .toml.")
@click.option("--model", default=None, help="Model (selects rows if the file has a model column).")
@click.option(
    "--tp",
    type=click.IntRange(min=1),
    default=None,
    help="Tensor parallelism (selects rows likewise).",
)
@click.option(
    "--dtype",
    type=click.Choice(["bf16", "fp16", "fp8", "fp4", "int4"]),
    default="bf16",
    show_default=True,
    help="Weight dtype of the engine.",
)
@click.option(
    "--engine",
    default=None,
    help="Engine preset to start from and keep cuda_graphs of (default: the profile's).",
)
@click.option("--name", default=None, help="Name of the fitted engine (default: fit-<file>).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "steps", "splitwise"]),
    default="auto",
    show_default=True,
    help="steps (one row per step) or splitwise (Splitwise perf-model CSV); auto detects.",
)
@click.option(
    "--columns",
    default=None,
    metavar="OUT=SRC,...",
    help="Map step columns to the file's: prefill_tokens, decode_seqs, "
    "decode_context_tokens, step_ms, prefill_attn_pairs, prefill_seqs, model, tp.",
)
@click.option("--out", type=click.Path(), required=True, help="Profile TOML to write.")
@json_option
def fit_steps(steps, gpu, model, tp, dtype, engine, name, fmt, columns, out, as_json) -> None:
    """Fit an engine's overheads to measured step times in STEPS (.csv or .parquet); the GPU's
    peaks and efficiencies stay the base profile's."""
    from tokenfleet.atomic import refuse_clobber
    from tokenfleet.calibrate.calibration import table_path
    from tokenfleet.calibrate.fit_steps import (
        default_engine_name,
        error_summary,
        fit_engine,
        write_fit,
    )
    from tokenfleet.calibrate.step_log import read_step_log
    from tokenfleet.hardware.profile import load_engine, load_profile

    if name is not None and not name.strip():
        raise click.UsageError("--name is empty; give the engine a name, or leave --name out")
    _check_writable(out)
    refuse_clobber(
        {"--out": out, "points file": table_path(out, "steps-fit")},
        {"STEPS": steps, "--gpu": gpu, "--engine": engine, "--model": model},
    )
    profile = load_profile(gpu)
    base = load_engine(engine or profile.default_engine, profile)
    log = read_step_log(steps, fmt=fmt, columns=columns, model=model, tp=tp)
    fit = fit_engine(log, profile, base, name=name or default_engine_name(steps), dtype=dtype)
    points_file = write_fit(profile, fit, log, out, dtype=dtype)
    summary = {
        "profile_file": str(out),
        "points_file": str(points_file),
        "base_profile": profile.name,
        "base_engine": base.name,
        "engine": {k: v for k, v in fit.preset.__dict__.items() if k != "aliases"},
        "fitted_keys": list(fit.fitted_keys),
        "held_keys": list(fit.held_keys),
        "errors": error_summary(fit),
        "points": fit.points.to_pylist(),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{'point':<52}{'measured ms':>12}{'before':>10}{'after':>10}")
    for p in summary["points"]:
        click.echo(
            f"{p['point']:<52}{p['measured_ms']:>12.2f}{p['before_error']:>+10.1%}"
            f"{p['after_error']:>+10.1%}"
        )
    click.echo("")
    click.echo(f"{'phase':<10}{'points':>7}{'median |err| before':>21}{'after':>8}"
               f"{'max |err| before':>18}{'after':>9}")  # fmt: skip
    for phase, e in summary["errors"].items():
        click.echo(
            f"{phase:<10}{e['points']:>7}{e['before_median_abs_error']:>21.1%}"
            f"{e['after_median_abs_error']:>8.1%}{e['before_max_abs_error']:>18.1%}"
            f"{e['after_max_abs_error']:>9.1%}"
        )
    click.echo("")
    click.echo(
        f"engine {fit.preset.name} (from {base.name}; hardware of {profile.name} unchanged):"
    )
    for key in fit.fitted_keys:
        click.echo(f"  {key:<24}{getattr(base, key):>10.4g} -> {getattr(fit.preset, key):.4g}")
    for key in fit.held_keys:
        click.echo(
            f"  {key:<24}{getattr(base, key):>10.4g}    kept: no effect of its own on these steps"
        )
    click.echo(f"wrote {out} and {Path(points_file).name}")


@calibrate.command("fit-runs")
@click.argument("runs_file", metavar="RUNS", type=click.Path())
@click.option("--base", default="vllm-v1", show_default=True, help="Engine preset to start from.")
@click.option(
    "--train",
    default=None,
    metavar="MODEL,...",
    help="Fit to these models' runs only and check on the rest (default: fit to all).",
)
@click.option("--name", default=None, help="Name of the fitted preset (default: <base>-runs).")
@click.option(
    "--accept-poor-fit",
    is_flag=True,
    help="Write the preset even if a fitted figure's median |error| stays above 25%.",
)
@click.option("--out", type=click.Path(), required=True, help="Engine preset TOML to write.")
@json_option
def fit_runs(runs_file, base, train, name, accept_poor_fit, out, as_json) -> None:
    """Fit an engine preset's overheads (frontend, per step, per sequence) to measured serving
    runs in RUNS (tokenfleet-measured-runs/1) by replaying them, and write it with its fit
    report beside it (<stem>.fit.json); a few minutes for the 21 vLLM runs."""
    from tokenfleet.atomic import atomic_path, refuse_clobber
    from tokenfleet.hardware.profile import load_engine
    from tokenfleet.study.measured_runs import load_runs
    from tokenfleet.study.run_fit import (
        evaluate,
        fit_overheads,
        poor_fit,
        with_provenance,
        write_preset,
    )

    report_path = Path(out).with_suffix(".fit.json")
    _check_writable(out, "an engine preset")
    refuse_clobber({"--out": out, "fit report": report_path}, {"RUNS": runs_file})
    load_engine(base)  # an unknown preset is one line before any work
    runs = load_runs(runs_file)
    models = {r.model for r in runs}
    wanted = set(train.split(",")) if train else models
    if wanted - models:
        raise click.UsageError(
            f"--train: no runs of {', '.join(sorted(wanted - models))} in {runs_file} "
            f"(its models: {', '.join(sorted(models))})"
        )
    fitted_to = [r for r in runs if r.model in wanted]
    held_out = [r for r in runs if r.model not in wanted]
    if not any(not r.saturated for r in fitted_to):
        raise click.UsageError("--train: every run of those models is saturated; nothing to fit")
    fit = fit_overheads(fitted_to, base=base, name=name or f"{base}-runs")
    with tempfile.TemporaryDirectory() as tmp:
        engine = str(write_preset(fit.preset, Path(tmp) / "fitted.toml"))
        halves = {"fitted_to": fitted_to, "held_out": held_out}
        results = {
            half: {
                "before": evaluate(group, base)[0],
                "after": dict(zip(("summary", "rows"), evaluate(group, engine), strict=True)),
            }
            for half, group in halves.items()
            if group
        }
    after = results["fitted_to"]["after"]
    why = poor_fit(after["summary"], after["rows"])
    if why and not accept_poor_fit:
        raise UserError(f"fit-runs: a poor fit, not written: {why}; --accept-poor-fit keeps it")
    report = {
        "base": base,
        "preset": {k: getattr(fit.preset, k) for k in fit.keys},
        "fitted_keys": list(fit.keys),
        "runs_file": str(runs_file),
        "fitted_to_runs": list(fit.runs),
        "held_out_models": sorted(models - wanted),
        "poor_fit": why,
        **results,
    }
    write_preset(with_provenance(fit, str(runs_file), sorted(wanted), results), out)
    with atomic_path(report_path) as tmp_report:
        tmp_report.write_text(json.dumps(report, indent=1))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for key in fit.keys:
        click.echo(f"{key:<20}{getattr(fit.preset, key):>10.4g}  (was {getattr(fit.base, key):g})")
    for half, result in results.items():
        click.echo(f"{half.replace('_', ' ')}: median |error| before -> after (max after)")
        for figure, s in result["after"]["summary"].items():
            before = result["before"][figure]["median_abs_pct"]
            click.echo(
                f"  {figure:<14}{before:>7.1f}% ->{s['median_abs_pct']:>6.1f}%"
                f"  (max {s['max_abs_pct']:.1f}%)"
            )
        for row in result["after"]["rows"]:
            if row["saturated"]:  # queue-bound: its E2E follows the run's length
                click.echo(
                    f"  saturated, not counted: {row['model']} run {row['run']} stage"
                    f" {row['stage']}: E2E mean {row['error_pct']['e2e_mean_ms']:+.1f}%"
                )
    if why:
        notify(f"fit-runs: kept a poor fit (--accept-poor-fit): {why}")
    click.echo(f"wrote {out} and {report_path.name}")
