"""Turn the errors a user can fix (bad flag, bad data, failed push) into one paragraph and an exit code."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

__all__ = ["exit_on_user_error"]


def _user_errors() -> tuple[type[BaseException], ...]:
    from .config import ConfigError
    from .data import DataError

    errors: list[type[BaseException]] = [ConfigError, DataError, FileNotFoundError]
    try:
        from .hub import HubError
    except ImportError:
        pass
    else:
        errors.append(HubError)
    return tuple(errors)


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Print a fixable error as one paragraph (one line, so commands in it copy whole) on stderr; exit 1."""
    try:
        yield
    except _user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
