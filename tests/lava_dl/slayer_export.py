"""Writes netx files with lava-dl's own slayer ``export_hdf5``; runs in .venv-lava (lava-dl 0.6.0, torch).

Usage: ``python tests/lava_dl/slayer_export.py OUT_DIR``. Writes, from seeded random slayer networks (CUBA
blocks, slayer's 8-bit weight quantisation, delays set to random whole steps after a first forward pass,
which is when slayer creates them):

- ``dense_delays.h5``: Dense 20->16 (axonal delays 0..4) -> Dense 16->12 (delays 0..4) -> Dense 12->6;
- ``recurrent_delays.h5``: Dense 20->16 -> Recurrent 16->16 (delays 0..3) -> Affine 16->6 (slayer's
  non-spiking readout: a CUBA group with threshold 2^18 - 1, beyond the 17 bits Lava declares);
- ``conv_first.h5``: Conv 2->4 (3x3, stride 2, padding 1, with slayer delays, which netx ignores) on a
  2x10x12 input -> Flatten -> Dense 120->10 (delays 0..3) -> Dense 10->5.

None has an ``input`` layer: slayer's ``Network.export_hdf5`` writes only its blocks.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from hw_sim.lava_worker import _import_netx  # noqa: E402  (Lava's import fix and the cv2/torchvision stand-ins)

_import_netx()

import h5py  # noqa: E402
import torch  # noqa: E402

import lava.lib.dl.slayer as slayer  # noqa: E402

NEURON = {"threshold": 1.0, "current_decay": 0.25, "voltage_decay": 0.03}


class Net(torch.nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.blocks = torch.nn.ModuleList(blocks)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x

    def export_hdf5(self, filename):
        """slayer's own recipe (lava-dl tutorials): one layer group per block, nothing else."""
        with h5py.File(filename, "w") as handle:
            layers = handle.create_group("layer")
            for index, block in enumerate(self.blocks):
                block.export_hdf5(layers.create_group(f"{index}"))


def build(name, blocks, input_shape, delays):
    net = Net(blocks)
    with torch.no_grad():
        net((torch.rand(1, *input_shape, 8) < 0.3).float())   # creates the delay parameters
        for index, largest in delays.items():
            delay = net.blocks[index].delay.delay
            delay.data = torch.randint(0, largest + 1, delay.shape).float()
    return net


def main(out: Path) -> None:
    torch.manual_seed(0)
    cuba = slayer.block.cuba
    nets = {
        "dense_delays.h5": build("dense_delays", [
            cuba.Dense(NEURON, 20, 16, weight_scale=2, delay=True),
            cuba.Dense(NEURON, 16, 12, weight_scale=2, delay=True),
            cuba.Dense(NEURON, 12, 6, weight_scale=2)], (20,), {0: 4, 1: 4}),
        "recurrent_delays.h5": build("recurrent_delays", [
            cuba.Dense(NEURON, 20, 16, weight_scale=2),
            cuba.Recurrent(NEURON, 16, 16, weight_scale=2, delay=True),
            cuba.Affine(NEURON, 16, 6, weight_scale=2)], (20,), {1: 3}),
        "conv_first.h5": build("conv_first", [
            cuba.Conv(NEURON, 2, 4, 3, stride=2, padding=1, weight_scale=2, delay=True),
            cuba.Flatten(),
            cuba.Dense(NEURON, 4 * 5 * 6, 10, weight_scale=2, delay=True),
            cuba.Dense(NEURON, 10, 5, weight_scale=2)], (2, 10, 12), {0: 2, 2: 3}),
    }
    out.mkdir(parents=True, exist_ok=True)
    for filename, net in nets.items():
        net.export_hdf5(out / filename)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
