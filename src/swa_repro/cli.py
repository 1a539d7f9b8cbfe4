"""One-line errors for the command-line entry points: a user mistake is not a traceback."""

from __future__ import annotations

import functools
import json
import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from swa_repro.checkpoint import CheckpointError
from swa_repro.config_check import ConfigError
from swa_repro.data import DataError

EXIT_USER_ERROR = 2
USER_ERRORS = (
    ConfigError,
    DataError,
    CheckpointError,
    HydraException,
    OmegaConfBaseException,
    json.JSONDecodeError,
)


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]."""
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise ConfigError(f"seeds must be comma-separated integers, got {text!r}") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line_errors(main):
    """Wrap an entry point: USER_ERRORS end it with one `error: ...` line and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as exc:
            print(f"error: {first_line(exc)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper
