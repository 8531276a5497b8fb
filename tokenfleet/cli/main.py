"""The `tokenfleet` command: a lazy click group, so each command imports only what it uses."""

from __future__ import annotations

import importlib
import signal
import sys
import warnings

import click

from tokenfleet import __version__
from tokenfleet.errors import Notice, SettingError, UserError

# name -> "module:attribute" of the click command; imported only when used.
COMMANDS: dict[str, str] = {
    "traces": "tokenfleet.cli.traces:traces",
    "compare": "tokenfleet.cli.compare:compare",
    "frontier": "tokenfleet.cli.frontier:frontier",
    "sweep": "tokenfleet.cli.sweep:sweep",
    "calibrate": "tokenfleet.cli.calibrate:calibrate",
    "replay": "tokenfleet.cli.replay:replay",
    "report": "tokenfleet.cli.report:report",
    "steptime": "tokenfleet.cli.steptime:steptime",
    "models": "tokenfleet.cli.catalog:models",
    "gpus": "tokenfleet.cli.catalog:gpus",
    "examples": "tokenfleet.cli.examples:examples",
}

# setting -> the flag that sets it, for errors that name a setting (errors.SettingError).
FLAGS: dict[str, str] = {
    "interval_s": "--interval",
    "unknown_tier": "--unknown-tier",
    "max_num_seqs": "--max-num-seqs",
    "max_num_batched_tokens": "--max-batched-tokens",
    "max_model_len": "--max-model-len",
}


class LazyGroup(click.Group):
    """Loads subcommands on demand and turns UserError into one line and exit code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        # SIGTERM (a killed job) unwinds like Ctrl-C, so atomic writers remove their temp files.
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGHUP, _interrupt)  # a closed terminal too
        warnings.showwarning = _show_notice
        try:
            return super().invoke(ctx)
        except UserError as err:
            flag = FLAGS.get(err.setting) if isinstance(err, SettingError) else None
            click.echo(
                f"error: {err}" + (f" ({flag} on the command line)" if flag else ""), err=True
            )
            sys.exit(2)
        except (
            click.UsageError
        ) as err:  # a bad flag or value: one line too, not click's usage block
            where = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
            click.echo(f"error: {err.format_message()}{where}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("error: interrupted; no output was written", err=True)
            sys.exit(130)


def _show_notice(message, category, filename, lineno, file=None, line=None) -> None:
    """Notices are one `warning:` line; any other warning keeps Python's own format."""
    if issubclass(category, Notice):
        click.echo(f"warning: {message}", err=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tokenfleet")
def cli() -> None:
    """tokenfleet: what it costs per million tokens to serve real LLM traffic, at what latency."""
