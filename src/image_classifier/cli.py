"""Turn the errors a user can fix (bad flag, bad data, failed push) into one paragraph and an exit code."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

__all__ = ["exit_on_user_error"]


def _user_errors() -> tuple[type[BaseException], ...]:
    from .config import ConfigError
    from .data import DataError
    from .files import DiskFullError

    errors: list[type[BaseException]] = [ConfigError, DataError, DiskFullError, FileNotFoundError]
    try:
        from .hub import HubError
    except ImportError:
        pass
    else:
        errors.append(HubError)
    return tuple(errors)


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Print a fixable error as one paragraph (one line, so commands in it copy whole) on stderr; exit 1.

    Training stopped by SIGINT/SIGTERM (after saving a checkpoint) prints the command that resumes
    it and exits 128 + the signal number (130 after Ctrl-C, 143 after SIGTERM), as a killed process would.
    """
    from .interrupt import TrainingInterrupted, resume_command

    try:
        yield
    except TrainingInterrupted as stopped:
        from accelerate import PartialState

        state = PartialState()
        if state.is_main_process:      # every process stops; one says so
            print(f"{stopped}. Resume with:\n  {resume_command()}", file=sys.stderr, flush=True)
        # Leave together: a launcher that sees one process end first terminates the rest, maybe mid-print.
        state.wait_for_everyone()
        sys.exit(stopped.exit_code)
    except _user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        from .files import is_disk_full

        if not is_disk_full(error):
            raise
        # A full disk anywhere else (the decode cache, a plot): what failed and where; atomic writes kept the rest.
        print(f"error: the disk is full: {error}. Files written before are intact; free some space and run "
              "the same command again.", file=sys.stderr)
        sys.exit(1)
