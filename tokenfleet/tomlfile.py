"""Reading the TOML files users hand us (models, GPU profiles, engine presets, scenarios)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from tokenfleet.errors import UserError


def read_toml(path: str | Path) -> dict:
    """The parsed file; a missing, unreadable or malformed file is one UserError line."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory; expected a TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid TOML ({err})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
