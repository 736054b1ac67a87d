"""The `lrm` command answers at once: help, `lrm rewards` and usage errors import no torch, scipy or
pipeline (checked in a fresh interpreter through sys.modules, a stand-in for start-up time), and
`lrm rewards` reads well in 80 columns and in a pipe."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lrm.cli.app import COMMANDS, app, load_command
from lrm.rewards import REWARDS

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "scipy", "matplotlib", "lrm.pipeline", "lrm.fitting", "lrm.fidelity", "lrm.models", "cv2")


def heavy_modules_after(*argv: str) -> tuple[list[str], subprocess.CompletedProcess]:
    """Run `lrm ARGV` in a fresh interpreter; the heavy modules it imported, and the process."""
    code = ("import sys\nfrom lrm.cli.app import main\nsys.argv = ['lrm', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "COLUMNS": "80"}, timeout=120)
    line = next(line for line in proc.stderr.splitlines() if line.startswith("HEAVY"))
    return eval(line.removeprefix("HEAVY ")), proc  # a list literal printed just above


def test_importing_the_cli_and_the_reward_registry_imports_nothing_heavy():
    code = f"import sys, lrm.cli.app, lrm.rewards; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, timeout=120).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["rewards"],
    ["rewards", "--json"],
    ["score", "--help"],
    ["encode", "--help"],
    ["label", "--help"],
    ["store", "info", "--help"],
    ["teacher", "train", "--help"],
    ["sample", "--help"],
    ["distill", "--help"],
    ["tune", "--help"],
    ["study", "overopt", "--help"],
    ["score", "colorfulness"],  # usage error: no paths
    ["encode", "procedural:4"],  # usage error: no --out
    ["scroe"],  # unknown command
    ["score", "colourfulness", "."],  # unknown reward
], ids=" ".join)
def test_help_rewards_and_usage_errors_import_nothing_heavy(argv):
    heavy, proc = heavy_modules_after(*argv)
    assert heavy == [], (heavy, proc.stderr[-2000:])
    assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr


def test_the_command_list_shows_each_commands_own_summary():
    for name, command in COMMANDS.items():
        real = load_command(name)
        assert (real.help or "").strip().splitlines()[0] == command.summary, name


def test_every_registered_reward_resolves_to_a_factory_carrying_its_spec():
    for name, entry in REWARDS.items():
        factory = entry.factory.resolve()  # imports the reward's module, builds nothing
        assert callable(factory), name
        if isinstance(factory, type):  # a Reward class carries the registry's spec itself
            assert factory.spec is entry.spec, name


@pytest.mark.parametrize("columns", ["80", "200"])
def test_rewards_fits_80_columns_and_reads_one_reward_per_line(columns):
    result = CliRunner(env={"COLUMNS": columns}).invoke(app, ["rewards"])  # output to a pipe, not a tty
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= int(columns)  # the notes wrap to the terminal (80 in a pipe)...
    assert "\x1b[" not in result.output  # no colour codes in a pipe
    for name, entry in REWARDS.items():
        line = next(line for line in lines if line.split()[:1] == [name])
        assert line.split()[1] == entry.spec.kind  # the whole row on one line
        assert line.split()[-1] in ("yes", "no") and len(line) <= 80  # ...the table fits 80 columns


def test_rewards_json_keeps_units_descriptions_and_options():
    result = CliRunner().invoke(app, ["rewards", "--json"])
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == set(REWARDS)
    assert rows["colorfulness"]["options"] == dict(REWARDS["colorfulness"].options)
    assert rows["jpeg-compressibility"]["units"] == "-kB"


def test_fit_help_imports_nothing_heavy():
    heavy, proc = heavy_modules_after("fit", "--help")
    assert heavy == [], heavy


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["rewards"]], ids=" ".join)
def test_the_cli_runs_without_click_installed(argv):
    # recent typer releases carry their own click and do not install it: `make demo` on a fresh clone
    # failed with "No module named 'click'" when lrm.cli.app imported click itself
    code = ("import sys\nsys.modules['click'] = None  # as if not installed: importing it raises\n"
            "from lrm.cli.app import main\nsys.argv = ['lrm', *sys.argv[1:]]\nmain()")
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "COLUMNS": "80"}, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]



def test_a_closed_pipe_ends_the_command_quietly(capsys):
    # `lrm fit --help | head -60` ended in "Error: [Errno 32] Broken pipe": the reader left, nothing failed
    from lrm.cli.errors import exit_with_message

    with pytest.raises(SystemExit) as exit:
        exit_with_message(BrokenPipeError(32, "Broken pipe"))
    assert exit.value.code == 1 and capsys.readouterr().err == ""


def test_every_help_reads_well_in_80_columns():
    # typer keeps a docstring's single line breaks: prose wrapped at 100 columns came out as alternating
    # long and short lines; examples longer than the terminal broke in the middle of a command
    for name in COMMANDS:
        command = load_command(name)
        for each in [command, *getattr(command, "commands", {}).values()]:
            for paragraph in (each.help or "").split("\n\n"):
                lines = paragraph.splitlines()
                if any(line[:1].isspace() for line in lines):  # examples: each line fits 80 columns
                    assert all(len(line) <= 76 for line in lines), (each.name, paragraph)
                else:
                    assert len(lines) == 1, (each.name, paragraph)  # prose: one line, wrapped by the terminal


def test_off_by_default_flags_have_no_negative_twin():
    # `--quiet --no-quiet` and `--noise-aware --no-noise-aware` took a third of an 80-column help page
    for name in COMMANDS:
        command = load_command(name)
        for each in [command, *getattr(command, "commands", {}).values()]:
            for param in each.params:
                assert not any(opt.startswith("--no-") for opt in param.secondary_opts), (each.name, param.name)


@pytest.mark.parametrize("argv", [["tune", "jpeg-compressibility", "--lr", "inf"], ["distill", "--fake-lr", "-inf"],
                                  ["fit", "sharpness", "--lr", "nan"], ["sample", "RUN", "--cfg", "inf"],
                                  ["study", "overopt", "--fidelity-threshold", "nan"]], ids=" ".join)
def test_number_options_refuse_inf_and_nan_before_any_work(argv):
    # `--lr inf` passed min=0, trained to NaN weights and exited 0; `--fidelity-threshold nan` never fired
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, argv)
    assert result.exit_code == 2 and "is not a finite number" in result.output, result.output
