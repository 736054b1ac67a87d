"""Entry point of the `lrm` command. Each command group lives in its own module.

A command's module (and torch, scipy, the pipeline it imports) is loaded only when that command
runs, so `lrm --help`, `lrm rewards` and usage errors answer at once. Click is reached through typer
only: recent typer releases ship their own copy of click and no longer install it.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from typing import NamedTuple

import typer
from typer.core import TyperCommand, TyperGroup

from lrm.cli.errors import USER_ERRORS, exit_with_message
from lrm.names import unknown_name


class Command(NamedTuple):
    module: str  # lrm.cli module whose register(app) adds the command
    summary: str  # the first line of the command's help, shown by `lrm --help` (a test keeps them equal)


COMMANDS = {
    "rewards": Command("lrm.cli.score", "List every reward adapter: kind, differentiable, and whether it can run here."),
    "score": Command("lrm.cli.score", "Score media files with a pixel reward."),
    "encode": Command("lrm.cli.data", "Encode clips into a latent store: latents, prompts, optional text embeddings, "
                                      "provenance."),
    "label": Command("lrm.cli.data", "Add one label column per reward, computed on the source media or on the "
                                     "decoded latents. Resumable."),
    "store": Command("lrm.cli.data", "Inspect latent stores and remove label columns."),
    "fit": Command("lrm.cli.fit", "Fit a latent surrogate to a reward and write its fidelity report."),
    "report": Command("lrm.cli.fit", "Judge a fitted surrogate again (in distribution or on another store), or "
                                     "rewrite a tuning run's report."),
    "predict": Command("lrm.cli.fit", "Score media through codec + surrogate: the fast path, same output as "
                                      "`lrm score`."),
    "teacher": Command("lrm.cli.teacher", "Train lrm's own latent DiT teacher (the generator tuning starts from)."),
    "distill": Command("lrm.cli.distill", "Distil a teacher into a few-step student (VSD, CD, ADM, SDM-2D); its run "
                                          "samples with `lrm sample`."),
    "tune": Command("lrm.cli.tune", "Reward-tune a distilled student with LRM fine-tuning, DDPO-SF or direct reward "
                                    "gradients."),
    "study": Command("lrm.cli.study", "Over-optimisation studies of reward-tuning runs: proxy vs gold, the gold "
                                      "peak, early stopping."),
    "sample": Command("lrm.cli.generate", "Sample a generator run: decoded PNG / GIF / MP4 per sample, a captioned "
                                          "grid, latents and index.json."),
    "evaluate": Command("lrm.cli.generate", "Evaluate a generator run's samples: true rewards, Vendi diversity, "
                                            "Frechet distance, prompt alignment."),
}


INTERRUPTED = ("Interrupted. Re-run the same command to resume: encode, label, fit, teacher train, distill and tune "
               "pick up where they stopped.")


def load_command(name: str) -> TyperCommand | TyperGroup:
    """The click command `name`, built from its module's register(app), its help reflowed."""
    group = typer.Typer()
    importlib.import_module(COMMANDS[name].module).register(group)
    command = typer.main.get_group(group).commands[name]
    for each in [command, *getattr(command, "commands", {}).values()]:
        each.help = reflow(each.help)
        for param in each.params:
            refuse_non_finite(param)
    return command


def refuse_non_finite(param) -> None:
    """The option refuses inf and nan numbers: a number range such as min=0 lets `--lr inf` through, and the run
    then trains to NaN weights or fails far from the option. Checked in the option's callback, before the user's."""
    user = param.callback

    def checked(ctx, option, value):
        for number in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(number, float) and not math.isfinite(number):
                raise typer.BadParameter(f"{number} is not a finite number.", ctx=ctx, param=option)
        return value if user is None else user(ctx, option, value)

    param.callback = checked


def reflow(help: str | None) -> str | None:
    """A docstring's prose paragraphs joined into one line each, so the terminal wraps them once.

    Typer keeps single line breaks after the first paragraph: text wrapped at 100 columns in the source
    came out as alternating long and short lines in an 80-column terminal. Paragraphs with an indented
    line (examples, lists) keep their lines.
    """
    if not help:
        return help
    paragraphs = inspect.cleandoc(help).split("\n\n")
    return "\n\n".join(p if any(line[:1].isspace() for line in p.splitlines()) else " ".join(p.split("\n"))
                       for p in paragraphs)


class LazyCommands(TyperGroup):
    """The top-level group: lists commands from COMMANDS and loads one only when it runs."""

    _listing = False  # True while the help page lists commands: summaries only, no module imported

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: typer.Context, name: str) -> TyperCommand | TyperGroup | None:
        if name not in COMMANDS:
            return None
        if self._listing:
            return TyperCommand(name, help=COMMANDS[name].summary)
        return load_command(name)

    def format_help(self, ctx: typer.Context, formatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as error:  # bad input: one line and exit code 2, the same under CliRunner
            exit_with_message(error)
        except KeyboardInterrupt:  # Ctrl-C: say how to go on (the work done so far is kept), exit 130
            print(INTERRUPTED, file=sys.stderr)
            sys.exit(130)

    def resolve_command(self, ctx: typer.Context, args: list[str]):
        if args and args[0] not in COMMANDS and not args[0].startswith("-"):
            ctx.fail(unknown_name("command", args[0], COMMANDS))
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="lrm",
    cls=LazyCommands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def lrm() -> None:
    """Latent surrogate rewards for image and video diffusion models."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
