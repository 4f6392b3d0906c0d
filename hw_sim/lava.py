"""Run a :class:`~hw_sim.network.Network` in Intel's Lava (``fixed_pt`` models), in ``.venv-lava``.

Lava pins numpy < 2 and forks worker processes, so it lives in its own virtual environment. This module
writes the network (``loihi.h5``) and the inputs to a job folder, starts ``hw_sim.lava_worker`` there in
its own process group, and reads back a :class:`~hw_sim.network.RunResult` with hw_sim's layout and
timing. A worker that fails, hangs past ``timeout`` or is killed gives a :class:`LavaError`, and its whole
process group (Lava's runtime children included) is killed, so nothing is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from .netx_io import netx_exact, save
from .network import Network, NetworkError, RunResult

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODES = ("auto", "concat", "per_sample")
BUILDERS = ("description", "netx")


class LavaError(RuntimeError):
    """Lava could not produce a result (missing environment, worker crash, timeout)."""


# Runs in the Lava environment, leader of its own process group, between us and the worker: it starts the
# worker (Lava forks its runtime processes from that) in its group and reads a pipe whose write end only
# we hold. End of file on it means we are gone — finished, or killed even by SIGKILL, when no cleanup of
# ours runs — and then it stops the whole group as _kill_group does, deletes the scratch folder and goes
# too, so no Lava process outlives us. Otherwise it passes on the worker's exit status (a signal as that
# signal).
_SUPERVISOR = r"""
import os, shutil, signal, subprocess, sys, threading, time
watch, scratch, job = int(sys.argv[1]), sys.argv[2], sys.argv[3]
worker = subprocess.Popen([sys.executable, "-m", "hw_sim.lava_worker", job], close_fds=True)
signal.signal(signal.SIGTERM, signal.SIG_IGN)   # outlive the group's SIGTERM to finish the cleanup
stopping, finished = threading.Event(), threading.Event()
def parent_gone():
    while os.read(watch, 1):
        pass
    stopping.set()
    os.killpg(0, signal.SIGTERM)
    finished.wait(3)
    time.sleep(0.3)   # multiprocessing's resource tracker frees the shared memory of the dead processes
    shutil.rmtree(scratch, ignore_errors=True)
    os.killpg(0, signal.SIGKILL)
threading.Thread(target=parent_gone, daemon=True).start()
status = worker.wait()
finished.set()
if stopping.is_set():
    threading.Event().wait()   # the cleanup thread ends this process with the group
if status < 0:
    signal.signal(-status, signal.SIG_DFL)
    os.kill(os.getpid(), -status)
sys.exit(status)
"""


WORKER_ERROR_PREFIX = "lava worker error: "   # marks the worker's one-line reason among Lava's own messages


def lava_python() -> Path:
    """The interpreter of the Lava environment: ``$SBNN_LAVA_PYTHON`` or ``.venv-lava`` in the project."""
    path = Path(os.environ.get("SBNN_LAVA_PYTHON", PROJECT_ROOT / ".venv-lava" / "bin" / "python"))
    if not path.exists():
        raise LavaError(f"the Lava environment is missing ({path}); run `make setup`")
    return path


def concat_is_exact(network: Network, builder: str = "description") -> bool:
    """Whether samples run back to back (staggered resets, zero padding) give exactly what fresh networks
    give: only without biases (neurons integrate through the pad) and without recurrent synapses (their
    buffered spikes cross the reset); with netx building the network, also only without delays (netx
    staggers its resets by one step per layer, which delayed leftovers outlast)."""
    for layer in network.layers:
        if np.any(layer.neurons.bias) or getattr(layer, "recurrent_weights", None) is not None:
            return False
        if builder == "netx" and getattr(layer, "max_delay", 0):
            return False
    return True


def choose_mode(network: Network, builder: str = "description") -> str:
    """"concat" (samples back to back) where that is provably exact, else "per_sample" (a fresh run each)."""
    return "concat" if concat_is_exact(network, builder) else "per_sample"


def _kill_group(process: subprocess.Popen, grace: float = 3.0) -> None:
    """End the worker's whole process group: SIGTERM first, so that Lava's processes end and
    multiprocessing's resource tracker (which ignores SIGTERM) frees the shared memory they leave in
    /dev/shm; SIGKILL for whatever is left after ``grace`` seconds."""
    deadline = time.monotonic() + grace
    try:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        while time.monotonic() < deadline:
            os.killpg(process.pid, 0)   # raises ProcessLookupError once the group is empty
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def run(network: Network, x: np.ndarray, *, record_states: bool = False, mode: str = "auto",
        builder: str = "description", workers: int | None = None, timeout: float = 600.0,
        netx_file: str | os.PathLike | None = None) -> RunResult:
    """Run ``network`` on ``x`` ((batch, T, *input_shape) integers) in Lava; same result as hw_sim.loihi.run.

    ``builder="description"`` builds Lava's Dense/DelayDense/Conv/LIF(Reset) processes from the description;
    ``"netx"`` has Intel's ``netx.hdf5.Network`` load a file: ``netx_file`` itself, byte for byte, when
    given (``network`` must then be ``hw_sim.load`` of it), else our ``loihi.h5`` of ``network`` (which
    must be :func:`~hw_sim.netx_io.netx_exact`). ``mode="auto"`` runs samples back to back only where
    that is exact (:func:`concat_is_exact`). ``workers``: parallel Lava processes over the batch (default:
    one for back-to-back runs, one per CPU core for per-sample runs).
    """
    x = _checked_input(network, x, mode=mode, builder=builder, netx_file=netx_file)
    if mode == "auto":
        mode = choose_mode(network, builder)
    if workers is None:
        workers = 1 if mode == "concat" else max(1, os.cpu_count() or 1)
    python = lava_python()
    chunks = [chunk for chunk in np.array_split(np.arange(x.shape[0]), max(1, min(workers, x.shape[0]))) if chunk.size]
    with tempfile.TemporaryDirectory(prefix="sbnn-lava-") as scratch:
        processes = []
        watch_read, watch_write = os.pipe()   # the supervisors' lifeline: closed when we finish or die
        try:
            for index, chunk in enumerate(chunks):
                job_dir = Path(scratch) / f"job{index}"
                _write_job(job_dir, network, x[chunk], builder=builder, mode=mode, record_states=record_states,
                           netx_file=netx_file)
                processes.append((_start_supervisor(python, watch_read, scratch, job_dir), job_dir))
            _wait_for_workers([process for process, _ in processes], timeout)
        finally:
            for process, _ in processes:
                _kill_group(process)
            os.close(watch_read)
            os.close(watch_write)
        return _read_results([job_dir for _, job_dir in processes], len(network.layers), record_states)


def _checked_input(network: Network, x: np.ndarray, *, mode: str, builder: str,
                   netx_file: str | os.PathLike | None) -> np.ndarray:
    """``x`` as an array, after checking :func:`run`'s arguments."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, found {mode!r}")
    if builder not in BUILDERS:
        raise ValueError(f"builder must be one of {BUILDERS}, found {builder!r}")
    if netx_file is not None and builder != "netx":
        raise ValueError("netx_file is only used with builder='netx'")
    x = np.asarray(x)
    if x.ndim != 2 + len(network.input_shape) or tuple(x.shape[2:]) != network.input_shape:
        raise NetworkError(f"input must have shape (batch, T, {', '.join(map(str, network.input_shape))}), "
                           f"found {x.shape}")
    if builder == "netx" and netx_file is None and not netx_exact(network):
        raise ValueError("netx cannot express this network exactly (see hw_sim.netx_exact)")
    return x


def _write_job(job_dir: Path, network: Network, x: np.ndarray, *, builder: str, mode: str, record_states: bool,
               netx_file: str | os.PathLike | None) -> None:
    """A worker's job folder: ``loihi.h5``, ``input.npy`` (its samples, int64) and ``job.json``."""
    job_dir.mkdir()
    if netx_file is not None:
        shutil.copyfile(netx_file, job_dir / "loihi.h5")   # the user's bytes, not our reading
    else:
        save(network, job_dir / "loihi.h5")
    np.save(job_dir / "input.npy", x.astype(np.int64))
    (job_dir / "job.json").write_text(json.dumps(
        {"builder": builder, "mode": mode, "record_states": record_states,
         "input_shape": list(network.input_shape)}))


def _start_supervisor(python: Path, watch_read: int, scratch: str, job_dir: Path) -> subprocess.Popen:
    """Start the supervisor (and through it the worker) of ``job_dir`` in a new process group."""
    return subprocess.Popen(
        [str(python), "-c", _SUPERVISOR, str(watch_read), scratch, str(job_dir)], cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, pass_fds=(watch_read,),
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"})


def _wait_for_workers(processes: list[subprocess.Popen], timeout: float) -> None:
    """Wait for every worker, ``timeout`` seconds for all together; :class:`LavaError` for the first that
    does not finish in time or fails."""
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            _, stderr = process.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise LavaError(f"the Lava worker did not finish within {timeout:g} s and was stopped")
        # The worker's own children (Lava's runtime) may outlive it; the group goes in any case.
        _kill_group(process)
        if process.returncode != 0:
            message = stderr.decode(errors="replace").strip().splitlines()
            marked = [line.split(WORKER_ERROR_PREFIX, 1)[1] for line in message if WORKER_ERROR_PREFIX in line]
            reason = (marked or message or [f"exit status {process.returncode}"])[-1]
            if process.returncode < 0:
                reason = f"killed by signal {-process.returncode}"
                if process.returncode == -signal.SIGKILL:
                    reason += " (SIGKILL: often the system's out-of-memory killer)"
            raise LavaError(f"the Lava worker failed: {reason}")


def _read_results(job_dirs: list[Path], num_layers: int, record_states: bool) -> RunResult:
    """The workers' ``output.npz`` files joined along the batch, in the order of ``job_dirs``."""
    parts = [np.load(job_dir / "output.npz") for job_dir in job_dirs]
    layers = range(num_layers)
    result = RunResult(spikes=[np.concatenate([p[f"spikes_{k}"] for p in parts]) for k in layers])
    if record_states:
        result.u.extend(np.concatenate([p[f"u_{k}"] for p in parts]) for k in layers)
        result.v.extend(np.concatenate([p[f"v_{k}"] for p in parts]) for k in layers)
    return result
