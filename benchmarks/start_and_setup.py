"""How fast the tool starts and installs, measured side by side in one run.

1. Start-up: the median wall time of ``sbnn --help`` and of ``sbnn <command> --help`` for every command
   (fresh processes of ``.venv``), and whether any of them imported torch or Lava (they must not: light
   commands stay light).
2. ``make setup`` from scratch: the repository's committed HEAD cloned into a temporary folder, set up once
   with uv (the default installer, an empty uv cache of its own) and once with pip (``SBNN_INSTALLER=pip``,
   pip's cache disabled), each timed end to end, with the disk size of the two environments (hardlinked
   files counted once). Skipped with ``--start-only``.

The temporary clones are deleted at the end (they are this script's own). The total time is printed last.

Usage: .venv/bin/python benchmarks/start_and_setup.py [--repeats N] [--start-only]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "export", "simulate", "verify", "energy", "pipeline", "import", "bias")
PROBE = ("import sys, runpy; sys.argv = {argv!r}\n"
         "try:\n    runpy.run_module('sbnn', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "heavy = sorted(m for m in ('torch', 'lava', 'h5py', 'onnx') if m in sys.modules)\n"
         "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n")


def start_time(argv: list[str], repeats: int) -> tuple[float, str]:
    """Median seconds of ``python -m sbnn *argv`` in fresh processes, and the heavy modules it imported."""
    times, heavy = [], ""
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PROBE.format(argv=["sbnn", *argv])], cwd=ROOT,
                              capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - started)
        heavy = next((line[6:] for line in done.stderr.splitlines() if line.startswith("HEAVY=")), "?")
    return statistics.median(times), heavy


def disk_usage(*paths: Path) -> int:
    """Bytes under ``paths``, each hardlinked file counted once."""
    seen, total = set(), 0
    for path in paths:
        for folder, _, files in os.walk(path):
            for name in files:
                status = os.lstat(os.path.join(folder, name))
                if (status.st_dev, status.st_ino) not in seen:
                    seen.add((status.st_dev, status.st_ino))
                    total += status.st_blocks * 512
    return total


def fresh_setup(installer: str, scratch: Path) -> tuple[float, int]:
    """Seconds of ``make setup`` in a fresh clone of HEAD with ``installer``, and the environments' bytes."""
    clone = scratch / f"clone-{installer}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    environment = dict(os.environ, SBNN_INSTALLER=installer, UV_CACHE_DIR=str(scratch / f"uv-cache-{installer}"),
                       PIP_NO_CACHE_DIR="1")
    started = time.perf_counter()
    subprocess.run(["make", "setup"], cwd=clone, env=environment, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return seconds, disk_usage(clone / ".venv", clone / ".venv-lava")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per start-up figure")
    parser.add_argument("--start-only", action="store_true", help="skip the two fresh setups")
    args = parser.parse_args()
    began = time.perf_counter()
    print("| command | median s | heavy modules imported |\n|---|---:|---|")
    for argv in (["--help"], *([command, "--help"] for command in COMMANDS)):
        seconds, heavy = start_time(argv, args.repeats)
        print(f"| sbnn {' '.join(argv)} | {seconds:.3f} | {heavy or 'none'} |", flush=True)
    if not args.start_only:
        scratch = Path(tempfile.mkdtemp(prefix="sbnn-setup-bench-"))
        try:
            print("\n| make setup from scratch | seconds | environments GB |\n|---|---:|---:|")
            for installer in ("uv", "pip"):
                seconds, size = fresh_setup(installer, scratch)
                print(f"| {installer} | {seconds:.1f} | {size / 1e9:.2f} |", flush=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"\ntotal: {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
