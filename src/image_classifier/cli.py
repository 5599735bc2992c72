"""Turn the errors a user can fix (bad flag, bad data, failed push) into one paragraph and an exit code."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

__all__ = ["exit_on_user_error", "user_errors", "USER_ERRORS"]

# Errors that carry a message for the user (not a bug), by module. Only modules already imported can have
# raised them, so they are looked up, not imported (`python -m image_classifier predict` never loads the Hub stage).
USER_ERRORS = {"config": "ConfigError", "data": "DataError", "files": "DiskFullError", "hub": "HubError",
               "images": "ImageError"}


def user_errors() -> tuple[type[BaseException], ...]:
    """The user-error classes of the modules loaded so far, and FileNotFoundError (a path that is not there)."""
    modules = {name: sys.modules.get(f"image_classifier.{name}") for name in USER_ERRORS}
    return tuple(getattr(module, USER_ERRORS[name]) for name, module in modules.items()
                 if module is not None and hasattr(module, USER_ERRORS[name])) + (FileNotFoundError,)


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
    except user_errors() as error:
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
