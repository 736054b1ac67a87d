"""Entry point of the `lrm` command. Each command group lives in its own module."""

from __future__ import annotations

import typer

from lrm.cli import data, fit, score
from lrm.cli.errors import USER_ERRORS, exit_with_message

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


def main() -> None:
    try:
        app()
    except USER_ERRORS as error:
        exit_with_message(error)


if __name__ == "__main__":
    main()
