"""Errors a user can cause. The CLI turns them into one line on stderr and exit code 2."""

import math
import warnings


class UserError(Exception):
    """A mistake in the user's input (file, flag, config); its message says what and how to fix.

    Anything else that escapes is a bug and may raise a traceback.
    """


class SettingError(UserError):
    """A UserError about one setting, named as the scenario names it (`interval_s`); a front
    end may add how it sets it (the CLI adds its flag)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


def require_non_negative(owner: str, **values: float) -> None:
    """Refuse a negative, infinite or NaN setting, naming it: prices, SLOs, limits, powers."""
    for key, value in values.items():
        if not (value >= 0 and math.isfinite(value)):
            raise UserError(f"{owner}: {key} = {value} must be a finite number >= 0")


class Notice(UserWarning):
    """Something the user should read but that does not stop the command (an earlier output
    replaced, an estimate dominated by a few requests, a CPU profile used as a GPU). The CLI
    prints each as one `warning:` line on stderr; library callers may filter or record them."""


def notify(message: str) -> None:
    """Issue a Notice from library code (the CLI shows it as one line)."""
    warnings.warn(message, Notice, stacklevel=2)
