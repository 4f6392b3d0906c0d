"""Fast start (issue 14): the parser of ``sbnn`` and of each command is built from modules that import only
the standard library, so ``sbnn --help`` and ``sbnn <command> --help`` import neither torch nor Lava nor h5py;
every command imports what it needs in its handler. Structural checks on ``python -X importtime``'s list
of imported modules, not timings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

HEAVY = ("torch", "lava", "h5py")
COMMANDS = ("train", "export", "pipeline", "bias", "verify", "energy", "simulate", "import")


def _imported(*argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime -m sbnn ARGV`` and return it with the names of the modules it imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "sbnn", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    names = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "sbnn.cli" in names, "the import list was not read: -X importtime's format changed?"
    return done, names


def _heavy(names: set[str], heavy: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted(name for name in names if name.split(".")[0] in heavy)


def test_sbnn_help_imports_no_torch():
    done, names = _imported("--help")
    assert done.returncode == 0 and "verify" in done.stdout
    assert not _heavy(names), _heavy(names)


def test_sbnn_verify_help_imports_no_torch():
    done, names = _imported("verify", "--help")
    assert done.returncode == 0 and "--builder" in done.stdout
    assert not _heavy(names), _heavy(names)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_imports_no_torch(command):
    done, names = _imported(command, "--help")
    assert done.returncode == 0 and f"sbnn {command}" in done.stdout
    assert not _heavy(names), _heavy(names)


def test_sorting_an_input_error_imports_no_torch(tmp_path):
    # main() tells input errors from bugs without importing the modules that define the error classes
    # (the verify handler itself imports hw_sim, and with it h5py).
    done, names = _imported("verify", str(tmp_path / "missing.h5"))
    assert done.returncode == 2 and done.stderr.splitlines()[-1].startswith("sbnn verify: ")
    assert not _heavy(names, ("torch", "lava")), _heavy(names, ("torch", "lava"))


def test_bias_parser_default_is_the_diagnostics_default():
    # sbnn.cli.bias repeats the number so that its parser imports no torch.
    from sbnn.cli.bias import DEFAULT_SAMPLES
    from sbnn.diagnostics import DEFAULT_SAMPLES as NUMERICS_DEFAULT

    assert DEFAULT_SAMPLES == NUMERICS_DEFAULT
