"""The ``sbnn`` command line (also ``python -m sbnn``).

Exit codes:

* 0 ok;
* 1 verification (or training) failed;
* 2 bad input, in one line on stderr, never a traceback: the project's own input errors (config, data,
  checkpoint, ``loihi.h5``, NIR, ONNX, ``.npy``, an ``--out`` that is not ours to replace, a run folder
  another ``sbnn`` process is writing) and operating-system errors about the user's paths (no such file,
  permission denied, disk full, read-only file system); what was there before is left as it was;
* 3 Lava could not run (missing environment, worker crash or timeout);
* 4 a bug: any other exception. One line says so and names the file holding the traceback (in the run
  folder when the command has one, else in the temporary folder); ``SBNN_DEBUG=1`` shows the traceback
  instead. Telling these apart from bad input keeps a user from hunting for a mistake they did not make.

Every command that writes takes the writer lock of its run folder (:func:`safeio.atomic.folder_lock`) and
never replaces what it did not write (:func:`export.folder.check_replaceable`, and ``--out`` may not be, hold
or lie inside the run being read). Every command that produces numbers takes ``--json`` and then prints one
JSON object on stdout.

One module per command (``train``, ``export``, ``import_``, ``simulate``, ``verify``, ``energy``, ``bias``,
``pipeline``), each with ``add_command(subparsers)`` and its handler; :mod:`sbnn.cli.inputs` holds what they
share. Building the parser imports only the standard library (``sbnn --help`` and ``sbnn <command> --help``
start in a fraction of a second): every handler imports numpy, torch, ``hw_sim`` or ``export`` itself, and
:func:`main` sorts errors without importing the modules that define them (an error of a class whose module
was never imported cannot have been raised).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import tempfile
import time
import traceback
from typing import NoReturn
from pathlib import Path

from .inputs import UserError

EXIT_OK, EXIT_DIFFERENT, EXIT_BAD_INPUT, EXIT_LAVA_FAILED, EXIT_BUG = 0, 1, 2, 3, 4

# OSErrors about the user's paths and disks (exit code 2); any other OSError is unexpected (exit code 4).
USER_PATH_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY,
                              errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
                              errno.ENAMETOOLONG, errno.ELOOP, errno.EXDEV, errno.EBUSY, errno.ETXTBSY})

# The project's own input errors (exit code 2), by the module that defines each.
_INPUT_ERRORS = (("sbnn.config", "ConfigError"), ("sbnn.data", "DataError"), ("sbnn.training.errors", "RunFolderError"),
                 ("export.nir_io", "NIRImportError"), ("export.onnx_export", "ONNXFileError"),
                 ("hw_sim.netx_io", "LoihiFileError"), ("hw_sim.network", "NetworkError"),
                 ("export.folder", "OutputRefused"), ("safeio.atomic", "FolderLocked"),
                 ("export.float_network", "ExportError"))


def _raised(error: BaseException, module: str, name: str) -> bool:
    """Whether ``error`` is a ``module.name``, without importing ``module``: when it was never imported, no
    error of its classes can have been raised (so sorting an error never imports torch or Lava)."""
    loaded = sys.modules.get(module)
    cls = getattr(loaded, name, None) if loaded is not None else None
    return isinstance(cls, type) and isinstance(error, cls)


class _OneLineParser(argparse.ArgumentParser):
    """argparse with its refusals in one line (no usage block), pointing at ``--help``; exit code 2 as argparse's.
    Subcommand parsers are made of the same class (argparse's default ``parser_class``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; its modules import only the standard library."""
    from . import bias, energy, export, import_, pipeline, simulate, train, verify

    parser = _OneLineParser(prog="sbnn", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (train, export, pipeline, bias, verify, energy, simulate, import_):
        command.add_command(commands)
    return parser


def _is_input_error(error: BaseException) -> bool:
    """Whether ``error`` is about what the user gave or asked for (exit code 2), not a bug (exit code 4).

    Only the project's own error classes count, plus OSErrors about paths and disks: a bare ``ValueError``
    or ``KeyError`` from deep inside is a bug, and saying "bad input" would send the user hunting for a
    mistake they did not make."""
    if isinstance(error, UserError) or any(_raised(error, module, name) for module, name in _INPUT_ERRORS):
        return True
    # FileNotFoundError without an errno: our own "no such run/temporary" messages, which name the path.
    return isinstance(error, FileNotFoundError) or (isinstance(error, OSError) and error.errno in USER_PATH_ERRNOS)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _writing(args: argparse.Namespace) -> str | None:
    """The folder a command writes, for messages (None for read-only commands)."""
    if args.command == "export":
        return str(args.out or Path(args.run) / ("export" if args.weights == "mean" else f"export_sample{args.seed}"))
    if args.command not in ("train", "pipeline", "import"):
        return None
    from ..train import default_run_dir  # (imports torch: only for the commands that train or write)

    if args.command in ("train", "pipeline"):
        return str(args.out or default_run_dir(args.config))
    return str(args.out or default_run_dir(args.model) / "export")


def _input_error_message(args: argparse.Namespace, error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        message = f"{where}{error.strerror}" + (f" ({error.filename2})" if error.filename2 else "")
        target = _writing(args)
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) and target:
            # Every result is written to a hidden temporary and renamed only when complete.
            message += f" while writing {target}; its previous version, if any, is unchanged"
        elif target and error.filename and _beside(str(error.filename), target):
            # a hidden temporary or lock file beside the folder asked for: name that folder too
            message += f" while writing {target}"
        if error.errno == errno.EEXIST and error.filename and os.path.isfile(error.filename):
            message += " (a file, where a folder is needed)"
        return message
    return _one_line(error)


def _beside(path: str, target: str) -> bool:
    """Whether ``path`` is one of the command's own hidden files next to or in ``target`` (its temporaries and
    its lock), rather than ``target`` itself or a file of the user's."""
    name, parent = os.path.basename(path), os.path.dirname(os.path.abspath(path))
    return name.startswith(".") and parent in (os.path.abspath(target), os.path.dirname(os.path.abspath(target)))


def _bug_folder(args: argparse.Namespace) -> Path | None:
    """The run folder of the command, when it is one this tool wrote (its marker present), for the traceback
    file; writing into anything else (an export folder, a legacy run folder) would make it not ours."""
    if args.command not in ("train", "pipeline", "export"):
        return None
    from ..train import RUN_MARKER, default_run_dir  # (imports torch: only for the commands that have a run)

    if args.command in ("train", "pipeline"):
        folder = Path(args.out) if args.out else default_run_dir(args.config)
    else:
        folder = Path(args.run)
    return folder if (folder / RUN_MARKER).is_file() else None


def _save_traceback(args: argparse.Namespace, error: BaseException, argv: list[str]) -> Path | None:
    """Write the traceback (with the command line and versions) to ``sbnn-bug-<time>-<pid>.txt`` in the run
    folder, else in the temporary folder; None when neither can be written."""
    import platform

    import numpy as np

    text = (f"sbnn {' '.join(argv)}\nworking directory: {os.getcwd()}\npython {platform.python_version()}, "
            f"numpy {np.__version__}, {platform.platform()}\n\n"
            + "".join(traceback.format_exception(type(error), error, error.__traceback__)))
    name = f"sbnn-bug-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    folder = _bug_folder(args)
    for place in ([folder] if folder is not None else []) + [Path(tempfile.gettempdir())]:
        try:
            with open(place / name, "x") as file:
                file.write(text)
            return place / name
        except OSError:
            continue
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("train", "pipeline"):
        from ..allocator import keep_freed_memory

        keep_freed_memory()
    debug = bool(os.environ.get("SBNN_DEBUG"))
    try:
        return args.handler(args)
    except Exception as error:
        if _raised(error, "sbnn.training.errors", "TrainingError"):
            print(f"sbnn {args.command}: {_one_line(error)}", file=sys.stderr)
            return EXIT_DIFFERENT
        if _raised(error, "hw_sim.lava", "LavaError"):
            print(f"sbnn {args.command}: {error}", file=sys.stderr)
            return EXIT_LAVA_FAILED
        if _is_input_error(error):
            # Bad input of every kind is one line and exit code 2; SBNN_DEBUG=1 shows the traceback too.
            if debug:
                traceback.print_exc()
            message = _input_error_message(args, error)
            prefix = "" if message.startswith(f"sbnn {args.command}") else f"sbnn {args.command}: "
            print(f"{prefix}{message}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if debug:
            traceback.print_exc()
        saved = _save_traceback(args, error, argv)
        reason = _one_line(f"{type(error).__name__}: {error}")[:300]
        where = f"the traceback is in {saved}" if saved else "the traceback could not be saved (set SBNN_DEBUG=1 to see it)"
        print(f"sbnn {args.command}: internal error, a bug in sbnn and not a problem with your input ({reason}); "
              f"{where}; please report it", file=sys.stderr)
        return EXIT_BUG
