"""Never lose or mix a user's work (issue 12 §1, §2, §5), with real ``sbnn`` processes on real files.

* ``--out`` never destroys: every target that is not an export folder this tool wrote (its marker file), or
  that is, holds or lies inside the run folder or input being read, is refused with one stderr line and exit
  code 2, and every file under the test's folder is byte for byte what it was (no hidden ``.old`` either).
  An export folder with the marker (or one of an earlier version, its files listed in export.json) is
  replaced; one into which the user put a file is not. A hand ``sbnn export --weights sample`` keeps the
  pipeline's ``export_sample<seed>`` unless ``--force``; ``sbnn import`` without ``--out`` keeps another
  model file's import.
* One writer per run folder: while a process holds the folder's lock, ``sbnn export``, ``train`` and
  ``pipeline`` on it refuse with one line naming the holder's pid; after the holder is SIGKILLed the next
  writer goes ahead.
* Errors as errors: an unexpected exception exits with code 4 and one line naming the saved traceback (in
  the run folder, else in $TMPDIR); ``SBNN_DEBUG=1`` shows it; a full disk (ENOSPC, injected) while replacing
  an export is one line, exit code 2, and the previous export is unchanged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, assert_bad_input, run_cli_concurrently

HOLDER = """
import sys, time
from safeio.atomic import folder_lock
with folder_lock(sys.argv[1], "test holder"):
    print("held", flush=True)
    time.sleep(300)
"""


def tree(folder: Path) -> dict[str, object]:
    """Every entry under ``folder``, hidden ones included: file bytes, symlink targets, folders."""
    found: dict[str, object] = {}
    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(parent) / name
            key = str(path.relative_to(folder))
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_dir():
                found[key] = "folder"
            else:
                found[key] = path.read_bytes()
    return found


def python(code: str, *args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (for faults injected into a real ``sbnn`` process)."""
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={**os.environ, "PYTHONPATH": f"{ROOT}", **(env or {})})


@pytest.fixture()
def sandbox(trained_run, tmp_path) -> Path:
    """A copy of the trained run (sandbox/run) with its posterior-mean export, a user's folder, file, home and a
    tiny NIR model, so that each test may damage what it likes."""
    from export.float_network import FloatLayer, FloatNetwork
    from export.nir_io import write_nir

    shutil.copytree(trained_run / "run", tmp_path / "run")
    shutil.copy(trained_run / "tiny.toml", tmp_path / "tiny.toml")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.txt").write_text("three years of work")
    (tmp_path / "plain.txt").write_text("a file")
    (tmp_path / "home" / "documents").mkdir(parents=True)
    (tmp_path / "home" / ".profile").write_text("export PATH")
    (tmp_path / "tmp").mkdir()
    layer = FloatLayer(kind="dense", weight=np.full((4, 10), 0.3), alpha=0.5, beta=0.9, threshold=1.0,
                       bias=np.zeros(4))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_nir(FloatNetwork(input_shape=(10,), layers=(layer,), dt=1e-3), tmp_path / name / "model.nir")
    return tmp_path


def test_out_that_is_not_ours_is_refused_and_nothing_changes(sandbox):
    done, = run_cli_concurrently([["export", "run", "--out", "run/export"]], sandbox)
    assert done.returncode == 0, done.stderr
    before = tree(sandbox)
    run = sandbox / "run"
    cases: list[tuple[list, str]] = [
        (["export", "run", "--out", "run"], "is the run folder"),
        (["export", "run", "--out", "run/checkpoint.pt"], "lies inside the run folder"),
        (["export", "run", "--out", "run/config.toml"], "lies inside the run folder"),
        (["export", "run", "--out", "run/export/model.nir"], "lies inside the run folder"),
        (["export", "run", "--out", "run/export/deeper"], "lies inside the run folder"),
        (["export", "run", "--out", "."], "holds the run folder"),
        (["export", "run", "--out", ".."], "holds the run folder"),
        (["export", run, "--out", sandbox], "holds the run folder"),
        (["export", "run", "--out", "home"], "not an export folder"),
        (["export", "run", "--out", "notes"], "not an export folder"),
        (["export", "run", "--out", "plain.txt"], "is a file"),
        (["import", "a/model.nir", "--out", "notes"], "not an export folder"),
        (["import", "a/model.nir", "--out", "a"], "holds the input file"),
        (["import", "a/model.nir", "--out", "a/model.nir"], "is the input file"),
        (["import", "a/model.nir", "--out", "home"], "not an export folder"),
        (["import", "a/model.nir", "--out", "run/export", "--calibration", "run/export/inputs.npy"],
         "holds the input file"),
        (["train", "tiny.toml", "--out", "notes"], "not an sbnn run folder"),
        (["train", "tiny.toml", "--out", "."], "not an sbnn run folder"),
        (["train", "tiny.toml", "--out", "plain.txt"], "not a folder"),
        (["pipeline", "tiny.toml", "--out", "home"], "not an sbnn run folder"),
        (["pipeline", "tiny.toml", "--out", "run/export"], "not an sbnn run folder"),
    ]
    results = run_cli_concurrently([args for args, _ in cases], sandbox)
    for (args, fragment), done in zip(cases, results):
        print(args, "->", done.returncode, done.stderr.strip())
        assert_bad_input(done, fragment, "nothing was changed")
    assert tree(sandbox) == before   # byte for byte, and no hidden leftovers anywhere


def test_exports_this_tool_wrote_are_replaced_and_nothing_else(sandbox):
    from export.folder import MARKER

    out = sandbox / "exports" / "mine"
    first, = run_cli_concurrently([["export", "run", "--out", out, "--json"]], sandbox)
    assert first.returncode == 0, first.stderr
    marker = json.loads((out / MARKER).read_text())
    assert marker["written_by"] == "sbnn export" and "export.json" in marker["files"]
    (out / "model.onnx").write_bytes(b"to be replaced")
    again, = run_cli_concurrently([["export", "run", "--out", out]], sandbox)
    assert again.returncode == 0, again.stderr
    assert (out / "model.onnx").read_bytes() != b"to be replaced"

    # An export folder of an earlier version (no marker, export.json lists its files) is ours too ...
    (out / MARKER).unlink()
    legacy, = run_cli_concurrently([["export", "run", "--out", out]], sandbox)
    assert legacy.returncode == 0, legacy.stderr
    assert (out / MARKER).is_file()
    # ... but not once the user has put something of theirs in it.
    (out / "my_notes.txt").write_text("mine")
    before = tree(sandbox)
    refused, = run_cli_concurrently([["export", "run", "--out", out]], sandbox)
    assert_bad_input(refused, "my_notes.txt", "nothing was changed")
    assert tree(sandbox) == before


def test_hand_sample_export_keeps_the_pipelines_and_imports_keep_each_other(sandbox):
    from sbnn.pipeline import export_run

    run = sandbox / "run"
    export_run(run, weights="sample", seed=0, written_by="sbnn pipeline")   # what the pipeline writes
    before = tree(sandbox)
    refused, = run_cli_concurrently([["export", "run", "--weights", "sample"]], sandbox)
    assert_bad_input(refused, "export_sample0", "sbnn pipeline", "--force")
    assert tree(sandbox) == before
    forced, = run_cli_concurrently([["export", "run", "--weights", "sample", "--force"]], sandbox)   # one writer at a time
    other, = run_cli_concurrently([["export", "run", "--weights", "sample", "--seed", "3"]], sandbox)
    assert forced.returncode == 0 and other.returncode == 0, forced.stderr + other.stderr
    assert json.loads((run / "export_sample0" / ".sbnn-export").read_text())["written_by"] == "sbnn export"
    again, = run_cli_concurrently([["export", "run", "--weights", "sample", "--seed", "3"]], sandbox)
    assert again.returncode == 0, again.stderr   # a hand export replaces a hand export

    # Two tools' model.nir: the default folder is named after the file and keeps the first one's import.
    first, = run_cli_concurrently([["import", "a/model.nir", "--dt", "1e-3"]], sandbox)
    assert first.returncode == 0, first.stderr
    default = sandbox / "runs" / "model" / "export"
    assert json.loads((default / ".sbnn-export").read_text())["source"]["model"] == str(sandbox / "a" / "model.nir")
    before = tree(sandbox)
    second, = run_cli_concurrently([["import", "b/model.nir", "--dt", "1e-3"]], sandbox)
    assert_bad_input(second, str(sandbox / "a" / "model.nir"), "--out")
    assert tree(sandbox) == before
    same, elsewhere = run_cli_concurrently([["import", "a/model.nir", "--dt", "1e-3"],
                                     ["import", "b/model.nir", "--dt", "1e-3", "--out", "runs/b/export"]], sandbox)
    assert same.returncode == 0 and elsewhere.returncode == 0, same.stderr + elsewhere.stderr


def test_one_writer_per_run_folder_and_a_killed_holder_leaves_no_lock(sandbox):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, "run"], cwd=sandbox, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert (sandbox / "run" / ".sbnn.lock").read_text() == f"{holder.pid} test holder\n"
        before = tree(sandbox)
        results = run_cli_concurrently([["export", "run"], ["train", "tiny.toml", "--out", "run", "--resume"],
                                 ["pipeline", "tiny.toml", "--out", "run"]], sandbox)
        for done in results:
            assert_bad_input(done, f"process {holder.pid} (test holder) is writing this folder")
        assert tree(sandbox) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The file stays, with the dead holder's line; the kernel released the lock itself.
    assert (sandbox / "run" / ".sbnn.lock").read_text() == f"{holder.pid} test holder\n"
    done, = run_cli_concurrently([["export", "run"]], sandbox)
    assert done.returncode == 0, done.stderr


def test_folder_lock_in_one_process(tmp_path):
    from safeio.atomic import LOCK_NAME, FolderLocked, folder_lock

    fresh = tmp_path / "fresh"
    with folder_lock(fresh, "outer"):
        with folder_lock(fresh, "inner"):   # re-entrant: the pipeline's stages run under the command's lock
            assert (fresh / LOCK_NAME).read_text() == f"{os.getpid()} outer\n"
        other = python("import sys\nfrom safeio.atomic import folder_lock, FolderLocked\n"
                       "try:\n    folder_lock(sys.argv[1]).__enter__()\nexcept FolderLocked as e:\n"
                       "    print(e); sys.exit(7)\n", fresh, cwd=tmp_path)
        assert other.returncode == 7 and f"process {os.getpid()} (outer)" in other.stdout, other.stdout + other.stderr
    assert not fresh.exists()   # created by the lock and left empty: removed again
    kept = tmp_path / "kept"
    with folder_lock(kept, "writer"):
        (kept / "result.txt").write_text("done")
    assert sorted(p.name for p in kept.iterdir()) == [LOCK_NAME, "result.txt"]
    with pytest.raises(FolderLocked, match="is writing this folder"):
        with folder_lock(kept, "first"):
            python("", cwd=tmp_path)   # a child process does not inherit the lock (O_CLOEXEC) ...
            raise FolderLocked("is writing this folder")   # ... and an error inside still releases it
    with folder_lock(kept):
        pass
    users = tmp_path / "users"   # a folder of the user's that an output is made in: it gains no lock file
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    with folder_lock(users, "import", leave_no_file=True):
        assert (users / LOCK_NAME).is_file()
        other = python("import sys\nfrom safeio.atomic import folder_lock, FolderLocked\n"
                       "try:\n    folder_lock(sys.argv[1]).__enter__()\nexcept FolderLocked as e:\n"
                       "    print(e); sys.exit(7)\n", users, cwd=tmp_path)
        assert other.returncode == 7, other.stdout + other.stderr
    assert sorted(p.name for p in users.iterdir()) == ["notes.txt"]
    with folder_lock(tmp_path / "fresh2", leave_no_file=True):
        pass
    assert not (tmp_path / "fresh2").exists()
    (users / LOCK_NAME).write_text("a file of the user's that happens to bear the name")
    with folder_lock(users, "import", leave_no_file=True):
        pass
    assert (users / LOCK_NAME).is_file()   # not made by that call: never removed


INJECT = """
import sys
import {module} as target
def fault(*args, **kwargs):
    raise {error}
target.{name} = fault
from sbnn.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_unexpected_exception_is_a_bug_with_a_saved_traceback(sandbox):
    env = {"TMPDIR": str(sandbox / "tmp")}
    code = INJECT.format(module="sbnn.pipeline", name="export_run", error="ValueError('injected fault')")
    done = python(code, "export", "run", "--out", "exports/x", cwd=sandbox, env=env)
    assert done.returncode == 4 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "a bug in sbnn" in done.stderr and "ValueError: injected fault" in done.stderr
    saved = Path(re.search(r"the traceback is in (\S+);", done.stderr).group(1))
    saved = saved if saved.is_absolute() else sandbox / saved
    assert saved.parent == sandbox / "run" and saved.name.startswith("sbnn-bug-")
    text = saved.read_text()
    assert "Traceback (most recent call last)" in text and "ValueError: injected fault" in text and "export run" in text
    assert not (sandbox / "exports").exists()

    # No run folder: the traceback goes to $TMPDIR. SBNN_DEBUG=1 prints it as well, same exit code.
    import hw_sim
    from hw_sim.random_networks import random_network

    hw_sim.save(random_network(3, input_shape=(10,), hidden=(12,), outputs=4), sandbox / "net" / "loihi.h5")
    code = INJECT.format(module="hw_sim.energy", name="energy_report", error="KeyError('injected')")
    done = python(code, "energy", "net", cwd=sandbox, env=env)
    assert done.returncode == 4 and str(sandbox / "tmp") in done.stderr, done.stderr
    done = python(code, "energy", "net", cwd=sandbox, env={**env, "SBNN_DEBUG": "1"})
    assert done.returncode == 4 and "Traceback (most recent call last)" in done.stderr, done.stderr
    assert len(list((sandbox / "tmp").glob("sbnn-bug-*.txt"))) == 2


def test_full_disk_while_replacing_an_export_is_one_line_and_keeps_it(sandbox):
    done, = run_cli_concurrently([["export", "run"]], sandbox)
    assert done.returncode == 0, done.stderr
    before = tree(sandbox)
    code = INJECT.format(module="export.folder", name="export_integer_onnx",
                         error="OSError(28, 'No space left on device')")
    done = python(code, "export", "run", cwd=sandbox)
    assert_bad_input(done, "No space left on device", "while writing run/export", "unchanged")
    assert tree(sandbox) == before   # the previous export whole, and no hidden staging folder left
