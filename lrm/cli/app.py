"""Entry point of the `lrm` command. Each command group lives in its own module."""

from __future__ import annotations

import os
import sys

import typer

from lrm.cli import data, fit, score

app = typer.Typer(
    name="lrm",
    help="Latent surrogate rewards for image and video diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
score.register(app)
data.register(app)
fit.register(app)

# What lrm raises for bad input (a missing file, an unknown name, a value out of range), each with a message
# that names the item and the fix; the command prints that message alone.
USER_ERRORS = (FileNotFoundError, KeyError, ValueError)
TRACEBACK_ENV = "LRM_TRACEBACK"  # set to 1 to see the full traceback of such an error


def user_message(error: Exception) -> str:
    """The message of an lrm error; a KeyError's without the quotes str(KeyError) adds."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def main() -> None:
    try:
        app()
    except USER_ERRORS as error:
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"Error: {user_message(error)}\n(set {TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
