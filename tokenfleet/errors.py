"""Errors a user can cause. The CLI turns them into one line on stderr and exit code 2."""

import math


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
