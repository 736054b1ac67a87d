"""How the `lrm` command reports bad input: one line naming the item and the fix, exit code 2.

lrm raises FileNotFoundError, KeyError or ValueError (and subclasses, e.g. StoreError) with such a
message for a missing file, an unknown name, a value out of range or a damaged file; other OSErrors
(permission denied, a folder where a file was expected) name their path. Every `lrm` command reports
them so (lrm.cli.app); anything else is a bug and keeps its traceback. Set LRM_TRACEBACK=1 to get the
traceback of these too.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

USER_ERRORS = (OSError, KeyError, ValueError)
TRACEBACK_ENV = "LRM_TRACEBACK"


def user_message(error: Exception) -> str:
    """The message of an lrm error; a KeyError's without the quotes str(KeyError) adds; an OSError of the system's
    as "<file>: <what went wrong>" (not "[Errno 17] File exists: 'x'")."""
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error)


def exit_with_message(error: Exception) -> NoReturn:
    """Print `Error: <message>` and exit 2; re-raise instead when LRM_TRACEBACK is set.

    A closed pipe (`lrm fit --help | head`) is no error of the user's: exit quietly, as other Unix tools do.
    """
    if isinstance(error, BrokenPipeError):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at Python's flush
        except (OSError, ValueError):  # a stdout without a file descriptor (e.g. captured in tests)
            pass
        sys.exit(1)
    if os.environ.get(TRACEBACK_ENV):
        raise error
    print(f"Error: {user_message(error)}\n(set {TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr)
    sys.exit(2)
