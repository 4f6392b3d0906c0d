"""What the tests share: the repository root, ``sbnn`` on the command line in a fresh interpreter, and one
tiny trained run (tiny_configs.TINY_EXPORTABLE_RUN) trained once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI_SECONDS = 900

# The test folders mirror the packages (tests/hw_sim, tests/export, ...) without being packages; with the
# repository first on the path, ``import hw_sim`` finds the package, never the test folder of that name.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run_cli(*args, cwd: Path | str = ROOT, env: dict | None = None,
            timeout: float = CLI_SECONDS) -> subprocess.CompletedProcess:
    """``python -m sbnn ARGS`` in a fresh interpreter (the repository on PYTHONPATH, ``env`` added),
    its output captured as text."""
    return subprocess.run([sys.executable, "-m", "sbnn", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def run_cli_concurrently(commands: list[list], cwd: Path) -> list[subprocess.CompletedProcess]:
    """:func:`run_cli` for each argument list, up to four at a time, results in the same order."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: run_cli(*args, cwd=cwd), commands))


def assert_bad_input(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """The command refused its input: exit code 2, one stderr line holding every fragment, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr[-2000:]
    for fragment in fragments:
        assert fragment in done.stderr, (fragment, done.stderr)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A folder holding ``tiny.toml`` (TINY_EXPORTABLE_RUN) and ``run/``, its trained run folder. Shared by
    the whole session: copy it before changing anything."""
    import tomllib

    from sbnn.config import config_from_dict
    from sbnn.train import train
    from tiny_configs import TINY_EXPORTABLE_RUN

    folder = tmp_path_factory.mktemp("trained")
    (folder / "tiny.toml").write_text(TINY_EXPORTABLE_RUN)
    train(config_from_dict(tomllib.loads(TINY_EXPORTABLE_RUN), source=str(folder / "tiny.toml")), folder / "run",
          json_mode=True)
    return folder
