"""Hostile and broken files on the command line (issue 7 §1): exit code 2 with one stderr line and no
traceback, and no file can run code — crafted pickles as ``checkpoint.pt`` (torch.save of a ``__reduce__``
object, a hand-written pickle inside torch's zip layout, a legacy plain pickle) and as CIFAR batches (opcodes
and globals tests/sbnn/test_data.py does not already cover) are refused and their payload never runs.

The command-line cases run concurrently (a few processes at a time) to keep the file fast.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import hw_sim
from hw_sim.random_networks import random_network
from sbnn.data import DataError, restricted_pickle_load
from sbnn.train import RunFolderError, load_checkpoint, load_trained_model
from conftest import assert_bad_input, run_cli_concurrently

# --------------------------------------------------------------------------------------------------
# Crafted pickles as checkpoint.pt

def system_call_pickle(marker: Path) -> bytes:
    """A protocol-2 pickle written by hand that calls os.system('touch MARKER') via GLOBAL and REDUCE."""
    command = f"touch {marker}".encode()
    return b"\x80\x02cos\nsystem\nq\x00X" + struct.pack("<I", len(command)) + command + b"\x85q\x01Rq\x02."


def torch_zip(data_pkl: bytes) -> bytes:
    """torch.save's zip layout (archive/data.pkl, byteorder, version) around a given data.pkl."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/.data/serialization_id", "0")
    return buffer.getvalue()


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_checkpoints(marker: Path) -> dict[str, bytes]:
    saved = io.BytesIO()
    torch.save({"format": 1, "epoch": 1, "model": Payload(marker)}, saved)
    return {"torch.save of a __reduce__ object": saved.getvalue(),
            "hand-written pickle in torch's zip layout": torch_zip(system_call_pickle(marker)),
            "legacy plain pickle": system_call_pickle(marker)}


def test_malicious_payloads_are_live_outside_the_safe_loaders(tmp_path):
    # Control: each crafted file does run its payload when loaded without weights_only.
    for name, content in malicious_checkpoints(tmp_path / "ran").items():
        path = tmp_path / "checkpoint.pt"
        path.write_bytes(content)
        try:
            torch.load(path, weights_only=False)
        except RuntimeError:   # the legacy format's magic number is what the payload returned
            pass
        assert (tmp_path / "ran").exists(), name
        (tmp_path / "ran").unlink()


def test_malicious_checkpoint_is_refused_and_never_runs(trained_run, tmp_path):
    marker = tmp_path / "ran"
    commands = []
    for index, content in enumerate(malicious_checkpoints(marker).values()):
        folder = tmp_path / f"run{index}"
        folder.mkdir()
        (folder / "config.toml").write_text((trained_run / "run" / "config.toml").read_text())
        (folder / "checkpoint.pt").write_bytes(content)
        with pytest.raises(RunFolderError, match="cannot be loaded as a checkpoint") as error:
            load_checkpoint(folder / "checkpoint.pt")
        assert "\n" not in str(error.value) and "checkpoint.pt" in str(error.value)
        with pytest.raises(RunFolderError):
            load_trained_model(folder)
        commands.append(["export", folder])
    # and a checkpoint that a resumed training would load (its own folder: the commands run at once, and
    # two writers on one run folder are refused by its writer lock before either reads the checkpoint)
    resume = tmp_path / "resume"
    resume.mkdir()
    for name in ("config.toml", "checkpoint.pt"):
        (resume / name).write_bytes((tmp_path / "run0" / name).read_bytes())
    commands.append(["train", trained_run / "tiny.toml", "--out", resume, "--resume"])
    for done in run_cli_concurrently(commands, tmp_path):
        assert_bad_input(done, "checkpoint.pt")
    assert not marker.exists()
    assert not any(folder.name.startswith("export") for folder in tmp_path.rglob("*"))


# --------------------------------------------------------------------------------------------------
# Crafted CIFAR batches (beyond tests/sbnn/test_data.py: other opcodes, numpy's own callables)

def test_crafted_cifar_pickles_are_refused(tmp_path):
    marker = tmp_path / "ran"
    command = f"touch {marker}".encode()
    crafted = {
        # protocol 0 INST and protocol 1 OBJ call the class they name, like REDUCE
        "INST": b"(S'" + command + b"'\nios\nsystem\n.",
        "OBJ": b"(cos\nsystem\nX" + struct.pack("<I", len(command)) + command + b"o.",
        # protocol 4 STACK_GLOBAL naming subprocess
        "STACK_GLOBAL": b"\x80\x04\x8c\nsubprocess\x94\x8c\x05Popen\x94\x93\x94]\x94(\x8c\x05touch\x94\x8c"
                        + bytes([len(str(marker))]) + str(marker).encode() + b"e\x85R.",
        # numpy.ndarray called directly would allocate what the file declares (8.6 GiB here), uninitialised
        "ndarray call": b"\x80\x02cnumpy\nndarray\nJ\xc0\xc6-\x00M\x00\x0c\x86\x85R.",
        # _reconstruct only as numpy pickles arrays: (ndarray, (0,), ...)
        "_reconstruct shape": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\xc0\xc6-\x00"
                              b"M\x00\x0c\x86U\x01b\x87R.",
        # numpy.load would unpickle another file without restriction
        "numpy.load": b"\x80\x02cnumpy\nload\nX\x05\x00\x00\x00x.npy\x85R.",
        # _codecs.encode only as encode(str, 'latin1')
        "_codecs": b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00utf-7\x86R.",
    }
    for name, content in crafted.items():
        path = tmp_path / "data_batch_1"
        path.write_bytes(content)
        with pytest.raises(DataError, match="refused to unpickle") as error:
            restricted_pickle_load(path)
        assert "\n" not in str(error.value), name
        assert not marker.exists(), name
    # the controls are live under plain pickle (they would have run)
    pickle.loads(crafted["INST"])
    assert marker.exists()


def test_malicious_cifar_batch_on_the_command_line(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(system_call_pickle(marker))
    config = tmp_path / "cifar.toml"
    config.write_text(f'[data]\nname = "cifar10"\npath = "{folder.parent}"\n[model]\nkind = "bnn"\nhidden = [8]\n'
                      f'[train]\nepochs = 1\n')
    done, = run_cli_concurrently([["train", config, "--out", tmp_path / "run"]], tmp_path)
    assert_bad_input(done, "data_batch_1: refused to unpickle: forbidden global")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# A sample of bad files through every command that reads one

def test_bad_files_exit_2_with_one_line(trained_run, tmp_path):
    network = random_network(3, input_shape=(10,), hidden=(12,), outputs=4)
    good = hw_sim.save(network, tmp_path / "good" / "loihi.h5")
    cases: list[tuple[list, tuple[str, ...]]] = []

    def export_folder(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "loihi.h5").exists():
            (folder / "loihi.h5").write_bytes(good.read_bytes())
        return folder

    export_folder("random_bytes").joinpath("loihi.h5").write_bytes(os.urandom(3000))
    cases.append((["verify", tmp_path / "random_bytes"], ("loihi.h5", "not an HDF5 file")))
    export_folder("truncated").joinpath("loihi.h5").write_bytes(good.read_bytes()[:4000])
    cases.append((["energy", tmp_path / "truncated"], ("loihi.h5",)))
    with h5py.File(export_folder("huge_shape") / "loihi.h5", "a") as handle:
        del handle["layer/1/shape"]
        handle["layer/1/shape"] = np.array([10 ** 9])
    cases.append((["simulate", tmp_path / "huge_shape"], ("loihi.h5", "more than 16777216 neurons")))
    with h5py.File(export_folder("linked") / "loihi.h5", "a") as handle:
        del handle["layer/2"]
        handle["layer/2"] = h5py.ExternalLink(str(good), "/layer/2")
    cases.append((["simulate", tmp_path / "linked"], ("link to another file",)))
    np.save(export_folder("nan_inputs") / "inputs.npy", np.full((2, 5, 10), np.nan))
    cases.append((["simulate", tmp_path / "nan_inputs"], ("integer",)))
    np.save(export_folder("object_inputs") / "inputs.npy", np.array([None, {}], dtype=object), allow_pickle=True)
    cases.append((["simulate", tmp_path / "object_inputs"], ("inputs.npy",)))

    from export.float_network import FloatLayer, FloatNetwork
    from export.nir_io import write_nir
    layer = FloatLayer(kind="dense", weight=np.ones((4, 10)), alpha=0.5, beta=0.9, threshold=1.0, bias=np.zeros(4))
    nir_path = write_nir(FloatNetwork(input_shape=(10,), layers=(layer,)), tmp_path / "nan.nir")
    with h5py.File(nir_path, "a") as handle:
        handle["node/nodes/syn0/weight"][...] = np.nan
    cases.append((["import", nir_path, "--out", tmp_path / "imported"], ("nan.nir", "NaN")))
    (tmp_path / "garbage.nir").write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(500))
    cases.append((["import", tmp_path / "garbage.nir", "--out", tmp_path / "imported"], ("garbage.nir",)))

    (tmp_path / "deep.toml").write_text('[data]\nname = "digits"\n[model]\nhidden = ' + "[" * 5000 + "]" * 5000)
    cases.append((["pipeline", tmp_path / "deep.toml", "--out", tmp_path / "p1"], ("deep.toml", "nested too deeply")))
    (tmp_path / "binary.toml").write_bytes(os.urandom(64) + b"\xff")
    cases.append((["train", tmp_path / "binary.toml", "--out", tmp_path / "p2"], ("binary.toml",)))
    np.savez(tmp_path / "nan.npz", x_train=np.full((4, 3), np.nan), y_train=np.arange(4) % 2,
             x_test=np.zeros((2, 3)), y_test=np.arange(2))
    (tmp_path / "npz.toml").write_text(f'[data]\nname = "npz"\npath = "{tmp_path / "nan.npz"}"\n'
                                       f'[model]\nkind = "bnn"\nhidden = [4]\n[train]\nepochs = 1\n')
    cases.append((["train", tmp_path / "npz.toml", "--out", tmp_path / "p3"], ("nan.npz", "NaN")))
    (tmp_path / "huge.toml").write_text('[data]\nname = "randman"\nsamples_per_class = 100000000000000\n'
                                        '[train]\nepochs = 1\n')
    cases.append((["train", tmp_path / "huge.toml", "--out", tmp_path / "p4"], ("does not fit in memory",)))
    (tmp_path / "wide.toml").write_text('[data]\nname = "digits"\n[model]\nkind = "bnn"\nhidden = [1000000000000]\n'
                                        '[train]\nepochs = 1\n')
    cases.append((["train", tmp_path / "wide.toml", "--out", tmp_path / "p5"], ("wide.toml", "do not fit in memory")))

    damages = (("truncated", lambda b: b[:len(b) // 2]), ("flipped", lambda b: b[:100] + bytes(200) + b[300:]))
    for name, damage in damages:
        run = tmp_path / f"run_{name}"
        run.mkdir()
        (run / "config.toml").write_text((trained_run / "run" / "config.toml").read_text())
        (run / "checkpoint.pt").write_bytes(damage((trained_run / "run" / "checkpoint.pt").read_bytes()))
        cases.append((["export", run], ("checkpoint.pt",)))
    checkpoint = torch.load(trained_run / "run" / "checkpoint.pt", weights_only=True)
    run = tmp_path / "run_fields"
    run.mkdir()
    (run / "config.toml").write_text((trained_run / "run" / "config.toml").read_text())
    torch.save({**checkpoint, "input_shape": [10 ** 9], "num_classes": 10 ** 12}, run / "checkpoint.pt")
    cases.append((["export", run], ("checkpoint.pt", "do not fit the model")))

    results = run_cli_concurrently([args for args, _ in cases], tmp_path)
    for (args, fragments), done in zip(cases, results):
        assert_bad_input(done, *fragments)
    assert not (tmp_path / "imported").exists()


def test_inputs_npy_declaring_a_huge_shape_is_bad_input(tmp_path):
    network = random_network(3, input_shape=(10,), hidden=(12,), outputs=4)
    hw_sim.save(network, tmp_path / "export" / "loihi.h5")
    header = repr({"descr": "<f8", "fortran_order": False, "shape": (10 ** 12, 20, 10)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    (tmp_path / "export" / "inputs.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header))
                                                     + header + bytes(64))
    done, = run_cli_concurrently([["simulate", tmp_path / "export"]], tmp_path)
    assert_bad_input(done, "inputs.npy")
