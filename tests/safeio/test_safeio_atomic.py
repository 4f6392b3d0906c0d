"""safeio.atomic: atomic files and folders, their hidden temporaries, and removing what killed writers left."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

from safeio.atomic import LEGACY_GRACE_SECONDS, atomic_folder, atomic_path, remove_stale



def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_temporaries_are_hidden_names_beside_the_target(tmp_path):
    pid = os.getpid()
    with atomic_path(tmp_path / "results.json") as temporary:
        assert temporary.parent == tmp_path and temporary.is_file()
        assert re.fullmatch(rf"\.results\.json\.{pid}-[0-9a-f]{{8}}\.tmp", temporary.name)
        temporary.write_text("{}")
    assert hidden(tmp_path) == [] and (tmp_path / "results.json").read_text() == "{}"

    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "old.txt").write_text("old")
    with atomic_folder(tmp_path / "export") as staging:
        assert re.fullmatch(rf"\.export\.{pid}-[0-9a-f]{{8}}\.new", staging.name) and staging.is_dir()
        (staging / "new.txt").write_text("new")
    assert hidden(tmp_path) == [] and sorted(p.name for p in (tmp_path / "export").iterdir()) == ["new.txt"]

    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "results.json") as temporary:
            temporary.write_text("half")
            raise RuntimeError
    assert hidden(tmp_path) == [] and (tmp_path / "results.json").read_text() == "{}"


def test_remove_stale_removes_only_leftovers_of_dead_writers_of_that_target(tmp_path):
    folder, outside = tmp_path / "run", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    dead, alive, own = dead_pid(), os.getppid(), os.getpid()
    old = time.time() - 2 * LEGACY_GRACE_SECONDS

    def file(name: str, mtime: float | None = None) -> str:
        (folder / name).write_text("x")
        if mtime is not None:
            os.utime(folder / name, (mtime, mtime))
        return name

    def directory(name: str, mtime: float | None = None) -> str:
        (folder / name).mkdir()
        (folder / name / "loihi.h5").write_text("x")
        (folder / name / "link").symlink_to(outside, target_is_directory=True)   # rmtree must not follow it
        if mtime is not None:
            os.utime(folder / name, (mtime, mtime))
        return name

    stale = {
        file(f".checkpoint.pt.{dead}-0123abcd.tmp"),
        directory(f".export.{dead}-89abcdef.new"),
        directory(f".export.{dead}-00000000.old"),
        file(f".checkpoint.pt.{own}-0123abcd.tmp"),     # our id, but nothing of ours: an earlier process's
        file(f".checkpoint.pt.tmp{dead}"),              # sbnn.train's earlier name
        file(".loihi.h5.k2_9zq0a.tmp", old),            # tempfile's names (earlier versions), unchanged for long
        directory(".export.ab_cd123.new", old),
    }
    kept = {
        "checkpoint.pt", "export",
        file(f".checkpoint.pt.{alive}-0123abcd.tmp"),   # a live writer's
        file(f".checkpoint.pt.tmp{alive}"),
        file(".loihi.h5.k2_9zq0b.tmp"),                 # an earlier version's, still recent
        file(f".metrics.json.{dead}-0123abcd.tmp"),     # another target
        file(f".checkpoint.pt.{dead}-0123abcd.tmp.bak"),
        file(f".checkpoint.pt.{dead}-0123ABCD.tmp"),
        file(f".checkpoint.pt.{dead}-0123abc.tmp"),
        file(f"checkpoint.pt.{dead}-0123abcd.tmp"),
        file(".checkpoint.pt.0-0123abcd.tmp"),
        file(f".checkpoint.ptx{dead}-0123abcd.tmp"),
        file(f".export.{dead}-0123abcd.new"),           # a file where our writers make a folder
        directory(f".checkpoint.pt.{dead}-4567abcd.tmp"),   # and a folder for a file
    }
    (folder / "checkpoint.pt").write_text("finished")
    (folder / "export").mkdir()
    # Symlinks with leftover names: neither followed nor removed.
    (folder / f".export.{dead}-11111111.new").symlink_to(outside, target_is_directory=True)
    (folder / f".export.{dead}-22222222.old").symlink_to(outside, target_is_directory=True)
    (folder / f".checkpoint.pt.{dead}-33333333.tmp").symlink_to(outside / "precious.txt")
    kept |= {f".export.{dead}-11111111.new", f".export.{dead}-22222222.old", f".checkpoint.pt.{dead}-33333333.tmp"}

    removed = remove_stale(folder, "checkpoint.pt") + remove_stale(folder, "export") + remove_stale(folder, "loihi.h5")
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept)
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert (outside / "precious.txt").read_text() == "keep"
    assert remove_stale(folder, "checkpoint.pt") == [] and remove_stale(tmp_path / "absent", "x") == []


def test_remove_stale_keeps_what_this_process_is_writing(tmp_path):
    with atomic_path(tmp_path / "checkpoint.pt") as temporary, atomic_folder(tmp_path / "export") as staging:
        assert remove_stale(tmp_path, "checkpoint.pt") == [] and remove_stale(tmp_path, "export") == []
        assert temporary.exists() and staging.exists()
        temporary.write_text("done")
        (staging / "loihi.h5").write_text("done")
    assert (tmp_path / "checkpoint.pt").read_text() == "done" and (tmp_path / "export" / "loihi.h5").exists()
    assert hidden(tmp_path) == []


def test_a_concurrent_writer_keeps_its_temporary_and_finishes(tmp_path):
    """Another live process in the middle of writing the same target: cleaning leaves its temporary, and its
    result lands."""
    script = ("import sys\nfrom safeio.atomic import atomic_path\n"
              f"with atomic_path({str(tmp_path / 'results.json')!r}) as temporary:\n"
              "    temporary.write_text('theirs')\n    print(temporary.name, flush=True)\n    sys.stdin.readline()\n")
    writer = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        name = writer.stdout.readline().strip()
        assert name.startswith(f".results.json.{writer.pid}-")
        assert remove_stale(tmp_path, "results.json") == []
        with atomic_path(tmp_path / "results.json") as temporary:   # a second writer, side by side
            temporary.write_text("ours")
        assert (tmp_path / name).read_text() == "theirs"
        writer.stdin.write("\n")
        writer.stdin.close()
        assert writer.wait(timeout=60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert (tmp_path / "results.json").read_text() == "theirs"   # the last rename wins, complete
    assert hidden(tmp_path) == []


def test_a_temporary_removed_under_a_writer_is_a_clear_error_and_the_target_keeps_its_version(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("previous")
    with pytest.raises(FileNotFoundError, match="results.json: its temporary .* disappeared"):
        with atomic_path(target) as temporary:
            temporary.write_text("new")
            temporary.unlink()
    assert target.read_text() == "previous"

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "loihi.h5").write_text("previous")
    with pytest.raises(FileNotFoundError, match="export: its temporary .* disappeared"):
        with atomic_folder(folder) as staging:
            (staging / "loihi.h5").write_text("new")
            os.rename(staging, tmp_path / "elsewhere")
    assert (folder / "loihi.h5").read_text() == "previous"
    assert hidden(tmp_path) == []
