"""Write files and folders so that readers see the old version or the new one, never half of either;
and remove the hidden temporaries that a killed writer leaves behind.

A writer works on a hidden temporary beside its target and renames it over the target when it is done.
The temporaries of a target ``NAME`` (in the target's folder) are::

    .NAME.<pid>-<token>.tmp    a file being written                           (atomic_path)
    .NAME.<pid>-<token>.new    a folder being written                         (atomic_folder)
    .NAME.<pid>-<token>.old    the folder being replaced, moved aside until the new one is in place

where ``<pid>`` is the writing process and ``<token>`` eight random hex digits. A write that fails or is
interrupted by an exception removes its temporary; one killed outright (SIGKILL, power loss, the
out-of-memory killer) cannot, and :func:`remove_stale` removes it later.

:func:`folder_lock` gives a folder one writer at a time (``fcntl.flock`` on ``.sbnn.lock`` inside it, released
by the kernel however its holder dies); the renames above keep readers safe without it.

This module uses the standard library only: everything may import it, the Lava worker's environment too.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_folder", "remove_stale", "LEGACY_GRACE_SECONDS", "folder_lock", "FolderLocked", "LOCK_NAME"]

# Names that earlier versions created, which carry no process id (tempfile's eight characters): removed
# only when they have not changed for this long, so that an older version writing the same target at this
# very moment keeps its temporary.
LEGACY_GRACE_SECONDS = 3600.0

_KINDS = {"tmp": "file", "new": "folder", "old": "folder"}
_LIVE: set[str] = set()          # this process's temporaries being written right now (absolute paths)
_LIVE_LOCK = threading.Lock()


def _temporary_name(name: str, kind: str) -> str:
    return f".{name}.{os.getpid()}-{secrets.token_hex(4)}.{kind}"


def _create(parent: Path, name: str, kind: str) -> Path:
    """Create a fresh, registered temporary of ``kind`` ("tmp": empty file; "new"/"old": empty folder)."""
    while True:
        candidate = parent / _temporary_name(name, kind)
        with _LIVE_LOCK:
            _LIVE.add(os.path.abspath(candidate))
        try:
            if kind == "tmp":
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))
            else:
                os.mkdir(candidate)
            return candidate
        except FileExistsError:
            with _LIVE_LOCK:
                _LIVE.discard(os.path.abspath(candidate))
        except BaseException:
            with _LIVE_LOCK:
                _LIVE.discard(os.path.abspath(candidate))
            raise


def _release(path: Path) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(os.path.abspath(path))


def _lost(temporary: Path, target: Path) -> FileNotFoundError:
    return FileNotFoundError(f"{target}: its temporary {temporary.name} disappeared while it was being written "
                             f"(removed by another process?); {target.name} keeps its previous version")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (an empty file); on success it is renamed over ``path``, on
    error removed. Stale temporaries of ``path`` (see :func:`remove_stale`) are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, path.name)
    temporary = _create(path.parent, path.name, "tmp")
    try:
        yield temporary
        try:
            os.replace(temporary, path)
        except FileNotFoundError:
            if not os.path.lexists(temporary):
                raise _lost(temporary, path) from None
            raise
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    finally:
        _release(temporary)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` whole.

    An existing ``path`` (a folder, or a symlink, which is moved, never followed) is moved aside into a
    ``.old`` folder and deleted only after the new folder is in place, so an interruption leaves either the
    old folder or the new one (plus, at worst, a hidden leftover that :func:`remove_stale` removes later).
    Stale temporaries of ``path`` are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, path.name)
    staging = _create(path.parent, path.name, "new")
    retired = None
    try:
        yield staging
        if os.path.lexists(path):
            retired = _create(path.parent, path.name, "old")
            os.replace(path, retired / path.name)
        try:
            os.replace(staging, path)
        except OSError as error:
            if retired is not None:   # put the previous version back
                with contextlib.suppress(OSError):
                    os.replace(retired / path.name, path)
                    os.rmdir(retired)
            if isinstance(error, FileNotFoundError) and not os.path.lexists(staging):
                raise _lost(staging, path) from None
            raise
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _release(staging)
        if retired is not None:
            _release(retired)


# --------------------------------------------------------------------------------------------------
# Leftovers of killed writers

def _patterns(name: str) -> tuple[re.Pattern, re.Pattern, re.Pattern]:
    escaped = re.escape(name)
    return (re.compile(rf"\.{escaped}\.(?P<pid>[1-9][0-9]{{0,9}})-[0-9a-f]{{8}}\.(?P<kind>tmp|new|old)"),
            re.compile(rf"\.{escaped}\.tmp(?P<pid>[1-9][0-9]{{0,9}})"),                # sbnn.train before
            re.compile(rf"\.{escaped}\.[a-z0-9_]{{8}}\.(?P<kind>tmp|new|old)"))          # tempfile, no pid


def _running(pid: int) -> bool:
    """Whether a process with this id exists (in this pid namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, belongs to someone else
        return True
    except (OverflowError, ValueError):   # beyond any pid
        return False
    return True


def remove_stale(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove, in ``folder``, the temporaries of target ``name`` whose writer is gone; return what went.

    Only entries named exactly as this module's writers name the temporaries of ``name`` are considered
    (``.NAME.<pid>-<token>.tmp|.new|.old``, and the names of earlier versions: ``.NAME.tmp<pid>`` and
    tempfile's ``.NAME.XXXXXXXX.tmp|.new|.old``), and only of the kind the writers create: a regular file
    for ``.tmp`` names, a real folder for ``.new``/``.old``. Anything else — other names, the target
    itself, a symlink (never followed, left in place), a folder called ``….tmp`` — is never touched.
    Folders are removed with ``shutil.rmtree``, which does not follow symlinks inside them. The folder is
    not searched recursively. Errors (a file removed meanwhile, no permission) skip that entry.

    Whose temporary is it? The writer's process id is in the name:

    * this process's own temporaries being written right now (registered in memory before they are
      created, until they are renamed or removed) are kept; one with this process's id that is not
      registered is a leftover of an earlier process that had the same id, and goes;
    * another process's temporary is removed only when no process with that id exists. A live writer's
      temporary is therefore never removed, however many processes write the same target at once. An id
      reused by an unrelated process only keeps a leftover longer;
    * names of earlier versions: ``.NAME.tmp<pid>`` as above; tempfile's names carry no id and are removed
      once unchanged for :data:`LEGACY_GRACE_SECONDS`.

    Concurrent writers: the target itself is never removed, only temporaries, and each writer renames its
    own complete temporary over the target, so a finished result is never lost; of two writers of one
    target the last rename wins, as without cleaning. The process-id check holds within one pid namespace
    (one machine, one container). A writer in another namespace sharing the folder (a network file system
    or a container writing to the same run folder) may look dead and lose its temporary; it then fails
    with a ``FileNotFoundError`` that names the target and says that the temporary disappeared (a one-line
    error, exit code 2, on the command line; running it again finishes), and the target keeps its last
    finished version — :func:`atomic_folder` moves the previous folder back if its new one vanished.
    We chose this over locks: a lock file would outlive a killed writer as visibly as the leftovers, and
    HDF5 takes its own lock on the files it writes.
    """
    folder = Path(folder)
    removed: list[Path] = []
    patterns = _patterns(name)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    with _LIVE_LOCK:
        own = set(_LIVE)
    now = time.time()
    for entry in entries:
        info = _leftover(folder, entry, patterns, own, now)
        if info is None:
            continue
        path = folder / entry.name
        try:
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:   # removed meanwhile, or not ours to remove
            continue
        removed.append(path)
    return removed


def _leftover(folder: Path, entry: os.DirEntry, patterns: tuple[re.Pattern, ...], own: set[str],
              now: float) -> os.stat_result | None:
    """The ``lstat`` of ``entry`` when it is a temporary whose writer is gone (the rules of
    :func:`remove_stale`; ``own``: this process's live temporaries, ``now``: the time in seconds since the
    epoch), else None."""
    match, legacy = None, False
    for index, pattern in enumerate(patterns):
        match = pattern.fullmatch(entry.name)
        if match:
            legacy = index > 0
            break
    if match is None:
        return None
    kind = match.groupdict().get("kind") or "tmp"
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    if not (stat.S_ISREG(info.st_mode) if _KINDS[kind] == "file" else stat.S_ISDIR(info.st_mode)):
        return None
    pid = match.groupdict().get("pid")
    if pid is None:
        return None if now - info.st_mtime < LEGACY_GRACE_SECONDS else info
    if int(pid) == os.getpid():
        return None if not legacy and os.path.abspath(folder / entry.name) in own else info
    return None if _running(int(pid)) else info


# --------------------------------------------------------------------------------------------------
# One writer per folder

LOCK_NAME = ".sbnn.lock"
_HELD: dict[str, int] = {}       # folders this process holds locked (absolute path -> nesting depth)
_HELD_LOCK = threading.Lock()


class FolderLocked(RuntimeError):
    """Another live process holds the folder's writer lock (see :func:`folder_lock`)."""


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it ("pid 123: sbnn pipeline"), or a neutral phrase when the
    holder has not written it yet or is gone (the file keeps the last holder's line)."""
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip().splitlines()
    except OSError:
        text = []
    match = re.fullmatch(r"(?P<pid>[1-9][0-9]{0,9})(?: (?P<what>.*))?", text[0]) if text else None
    if match and _running(int(match["pid"])):
        return f"process {match['pid']} ({match['what'] or 'sbnn'})"
    return "another process"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "", *, leave_no_file: bool = False) -> Iterator[Path]:
    """Hold the exclusive writer lock of ``folder`` (created if missing) for the ``with`` block.

    The lock is ``fcntl.flock`` on ``folder/.sbnn.lock``: the kernel releases it when the holder exits in
    any way (SIGKILL and the out-of-memory killer included), so a lock can never be left stuck; the file
    itself may remain and means nothing while nobody holds it. A second writer does not wait: it gets
    :class:`FolderLocked` at once, naming the holder (its pid and ``what``, which the holder writes into
    the file). Waiting would let a forgotten pipeline in another terminal stall the second one without a
    word; refusing says who to wait for. Within one process the lock is re-entrant (the pipeline's stages
    run under the command's lock).

    When this call created ``folder`` and nothing but the lock file is in it at the end (the command
    failed before writing), the lock file and the folder are removed again, so a refused or failed command
    leaves no empty folder behind. Removing a lock file is safe against racing openers because an acquirer
    checks, once it holds the lock, that the file it locked is still the one at ``folder/.sbnn.lock``, and
    starts again otherwise. ``leave_no_file`` removes the lock file at the end when this call created it: for a
    lock on a folder of the user's (the one an output folder is made in), which should not gain a file of ours.

    flock is advisory and local: it serialises this tool's writers on one machine (NFS gives no such
    guarantee); other programs may still write the folder.
    """
    folder = Path(folder)
    key = os.path.abspath(folder)
    if _hold_again(key):
        try:
            yield folder
        finally:
            with _HELD_LOCK:
                _HELD[key] -= 1
        return
    created = _make_folder(folder)
    path = folder / LOCK_NAME
    # leave_no_file removes only a lock file this call made: a file of that name already there is left alone
    remove_file = leave_no_file and not os.path.lexists(path)
    fd = _acquire(path, folder)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}".strip().encode() + b"\n", 0)
        with _HELD_LOCK:
            _HELD[key] = 1
        try:
            yield folder
        finally:
            _release_lock(key, fd, path, remove_folder=created, remove_file=remove_file)
    finally:
        os.close(fd)


def _hold_again(key: str) -> bool:
    """True, counting one more nesting, when this process already holds the lock of folder ``key`` (an
    absolute path); False when it does not."""
    with _HELD_LOCK:
        if key in _HELD:
            _HELD[key] += 1
            return True
        return False


def _make_folder(folder: Path) -> bool:
    """Create ``folder`` (and its parents); True only when this call's mkdir made it: a folder someone else
    made meanwhile is not ours to remove."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(folder)
    except FileExistsError:
        return False
    return True


def _acquire(path: Path, folder: Path) -> int:
    """An open descriptor of the lock file ``path`` holding its exclusive flock; :class:`FolderLocked` at once
    when another process holds it."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderLocked(f"{folder}: {holder} is writing this folder; wait until it has finished, "
                               f"or choose another folder") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            same = None
        mine = os.fstat(fd)
        if same is not None and (same.st_dev, same.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)   # the file was removed (or replaced) between our open and our lock: take the new one


def _release_lock(key: str, fd: int, path: Path, *, remove_folder: bool, remove_file: bool = False) -> None:
    """Forget the lock of folder ``key`` and blank the lock file (``fd`` stays open, so still locked, until
    the caller closes it); with ``remove_folder``, remove the lock file and its folder when nothing else is in
    it; with ``remove_file``, remove the lock file whatever else is there."""
    with _HELD_LOCK:
        _HELD.pop(key, None)
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)   # nobody holds it now; a SIGKILLed holder's line is checked by _holder
    with contextlib.suppress(OSError):
        alone = [entry.name for entry in os.scandir(path.parent)] == [LOCK_NAME]
        if remove_file or (remove_folder and alone):
            os.unlink(path)   # safe while we hold it: an acquirer that opened it finds it gone and starts again
        if remove_folder and alone:
            os.rmdir(path.parent)
