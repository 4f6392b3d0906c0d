"""The guards every HDF5 reader runs before it trusts a file (safeio.hdf5), through the readers that use
them: a damaged global heap that would make libhdf5 loop forever is refused, whole files pass."""

from __future__ import annotations

from pathlib import Path

import pytest

import hw_sim
import safeio.hdf5
from export.nir_io import NIRImportError, read_nir, write_nir
from fuzzing import guarded, small_float_network, write_netx_style_file, write_tiny_shd_file
from hw_sim.random_networks import random_network
from sbnn.data import DataError
from sbnn.data.shd import read_shd_file


@pytest.fixture(scope="module")
def hdf5_files(tmp_path_factory) -> dict[str, Path]:
    """A loihi.h5 with lava groups, one without (as netx writes it), a NIR file and an SHD file."""
    root = tmp_path_factory.mktemp("hdf5")
    network = random_network(5, input_shape=(10,), hidden=(12,), outputs=4, recurrent=True, readout=True)
    files = {"loihi": hw_sim.save(network, root / "loihi.h5"),
             "netx": write_netx_style_file(root / "netx.h5"),
             "nir": write_nir(small_float_network(conv=False), root / "dense.nir"),
             "shd": write_tiny_shd_file(root / "shd_train.h5")}
    return files


def test_damaged_global_heap_is_refused_instead_of_hanging(hdf5_files, tmp_path):
    """libhdf5 loops forever on a global heap collection whose free-space object has size 0 (found by
    the byte-flip fuzzing of NIR files, whose strings live there); every HDF5 reader checks first."""
    for kind in ("nir", "shd"):
        content = bytearray(hdf5_files[kind].read_bytes())
        start = content.find(b"GCOL\x01\x00\x00\x00")
        assert start > 0
        position = start + 16
        while int.from_bytes(content[position:position + 2], "little"):   # walk to the free-space object
            position += 16 + ((int.from_bytes(content[position + 8:position + 16], "little") + 7) & ~7)
        content[position + 8:position + 16] = bytes(8)                     # ... and make it empty
        path = tmp_path / hdf5_files[kind].name
        path.write_bytes(bytes(content))
        assert safeio.hdf5.hdf5_heap_damage(path) is not None
        if kind == "nir":
            with pytest.raises(NIRImportError, match="empty free-space object"):
                guarded(read_nir, path)
        else:
            with pytest.raises(DataError, match="empty free-space object"):
                guarded(read_shd_file, path, steps=10, max_time=1.4)
    for kind in ("loihi", "nir", "shd", "netx"):   # and whole files pass
        assert safeio.hdf5.hdf5_heap_damage(hdf5_files[kind]) is None
