"""Activity counts and energy proxies for an integer network run in hw_sim.

Counts per layer, over the evaluated samples (all per inference = per sample, over its T steps):

- ``input_spikes``: spikes (or non-zero payloads) arriving at the layer's synapse;
- ``synops``: synaptic operations, one per (arriving spike, non-zero-weight connection) pair — for conv
  layers counted exactly, including the partial receptive fields at the borders;
- ``neuron_updates``: every neuron is updated every step (``active`` when u or v is non-zero after the
  update, else ``inactive``);
- ``output_spikes`` and ``firing_rate`` (spikes per neuron per step);
- ``ann_macs``: multiply-accumulates of the equivalent non-spiking network (same layers, dense
  activations), per time step and over T steps.

Energy proxies (µJ per inference) all come from :data:`ENERGY_TABLE`, one documented table of constants.
They are proxies: orders of magnitude for comparison, not measurements of a chip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .network import ConvLayer, Network

PICO = 1e-12

# One table, with sources. Energies in joules per operation.
ENERGY_TABLE: dict[str, dict] = {
    "loihi_synop": {"joules": 23.6 * PICO, "source": "Davies et al. 2018 (Loihi), synaptic spike op"},
    "loihi_neuron_update_active": {"joules": 81 * PICO, "source": "Davies et al. 2018, neuron update (active)"},
    "loihi_neuron_update_inactive": {"joules": 52 * PICO, "source": "Davies et al. 2018, neuron update (inactive)"},
    "fp32_add": {"joules": 0.9 * PICO, "source": "Horowitz 2014, 45 nm: 32-bit float add"},
    "fp32_mac": {"joules": 4.6 * PICO, "source": "Horowitz 2014, 45 nm: 32-bit float mult (3.7) + add (0.9)"},
    "int8_add": {"joules": 0.03 * PICO, "source": "Horowitz 2014, 45 nm: 8-bit int add"},
    "int8_mac": {"joules": 0.23 * PICO, "source": "Horowitz 2014, 45 nm: 8-bit int mult (0.2) + add (0.03)"},
    "sram_read_32bit": {"joules": 5.0 * PICO, "source": "Horowitz 2014, 45 nm: 8 KB SRAM, 64-bit read 10 pJ, per 32 bits"},
}

PROXIES = {
    "loihi": "Loihi: synops x 23.6 pJ + active updates x 81 pJ + inactive updates x 52 pJ",
    "snn_ac_45nm": "45 nm SNN: synops x 0.9 pJ (fp32 accumulate, the usual SNN proxy)",
    "snn_memory_45nm": "45 nm SNN with memory: synops x (8-bit add + 8-bit weight read) + updates x (2 x 32-bit state read/write + add)",
    "ann_mac_45nm": "45 nm equivalent ANN over T steps: MACs x 4.6 pJ (fp32)",
    "ann_int8_45nm": "45 nm equivalent ANN over T steps: MACs x 0.23 pJ (int8)",
    "ann_memory_45nm": "45 nm equivalent ANN with memory: MACs x (fp32 MAC + 32-bit weight read)",
}


@dataclass
class LayerActivity:
    layer: int
    kind: str
    neurons: int
    input_spikes: float
    synops: float
    neuron_updates: float
    active_updates: float
    output_spikes: float
    firing_rate: float
    ann_macs_per_step: int

    def to_json(self) -> dict:
        return dict(vars(self))


def _connections(layer) -> np.ndarray:
    """0/1 mask of non-zero connections: (out, in) for dense, the conv kernel for conv."""
    return (layer.weights != 0).astype(np.float64)


def count_activity(network: Network, x: np.ndarray) -> list[LayerActivity]:
    """Run ``network`` on ``x`` ((batch, T, *input_shape) integers) and count activity per inference."""
    import torch
    import torch.nn.functional as F

    result = network.run(x, record_states=True)
    batch, steps = x.shape[:2]
    layers = []
    layer_input = (np.asarray(x) != 0).astype(np.float64)
    for index, layer in enumerate(network.layers):
        mask = _connections(layer)
        rows = layer_input.reshape(batch * steps, *layer_input.shape[2:])
        if isinstance(layer, ConvLayer):
            with torch.no_grad():
                synops = float(F.conv2d(torch.from_numpy(rows), torch.from_numpy(mask), stride=layer.stride,
                                        padding=layer.padding, dilation=layer.dilation, groups=layer.groups).sum())
            c_out, h, w = layer.shape
            macs = int(c_out * h * w * np.prod(layer.weights.shape[1:]))
        else:
            fan_out = mask.sum(axis=0)                        # per input: connections with non-zero weight
            synops = float((rows.reshape(rows.shape[0], -1) @ fan_out).sum())
            macs = int(layer.weights.size)
            if layer.recurrent_weights is not None:
                recurrent_fan_out = (layer.recurrent_weights != 0).sum(axis=0)
                synops += float((result.spikes[index].reshape(batch * steps, -1) @ recurrent_fan_out).sum())
                macs += int(layer.recurrent_weights.size)
        neurons = int(np.prod(layer.shape))
        active = float(((result.u[index] != 0) | (result.v[index] != 0)).sum())
        output_spikes = float(result.spikes[index].sum())
        layers.append(LayerActivity(
            layer=index, kind="conv" if isinstance(layer, ConvLayer) else "readout" if layer.readout else "dense",
            neurons=neurons, input_spikes=float(rows.sum()) / batch, synops=synops / batch,
            neuron_updates=float(neurons * steps), active_updates=active / batch,
            output_spikes=output_spikes / batch, firing_rate=output_spikes / (batch * steps * neurons),
            ann_macs_per_step=macs))
        layer_input = result.spikes[index].astype(np.float64)
    return layers


def energy_proxies(activity: list[LayerActivity], steps: int) -> dict[str, float]:
    """Energy per inference in µJ for every proxy in :data:`PROXIES`."""
    e = {name: entry["joules"] for name, entry in ENERGY_TABLE.items()}
    synops = sum(a.synops for a in activity)
    updates = sum(a.neuron_updates for a in activity)
    active = sum(a.active_updates for a in activity)
    macs = sum(a.ann_macs_per_step for a in activity) * steps
    joules = {
        "loihi": synops * e["loihi_synop"] + active * e["loihi_neuron_update_active"]
        + (updates - active) * e["loihi_neuron_update_inactive"],
        "snn_ac_45nm": synops * e["fp32_add"],
        "snn_memory_45nm": synops * (e["int8_add"] + e["sram_read_32bit"] / 4)
        + updates * (2 * e["sram_read_32bit"] + e["fp32_add"]),
        "ann_mac_45nm": macs * e["fp32_mac"],
        "ann_int8_45nm": macs * e["int8_mac"],
        "ann_memory_45nm": macs * (e["fp32_mac"] + e["sram_read_32bit"]),
    }
    return {name: value * 1e6 for name, value in joules.items()}


def energy_report(network: Network, x: np.ndarray) -> dict:
    """Counts per layer and proxies per inference, as the ``sbnn energy --json`` object."""
    activity = count_activity(network, x)
    steps = int(x.shape[1])
    per_layer = []
    for a in activity:
        entry = a.to_json()
        entry["energy_uj"] = energy_proxies([a], steps)
        per_layer.append(entry)
    return {"samples": int(x.shape[0]), "steps": steps,
            "synops_per_inference": sum(a.synops for a in activity),
            "neuron_updates_per_inference": sum(a.neuron_updates for a in activity),
            "ann_macs_per_inference": sum(a.ann_macs_per_step for a in activity) * steps,
            "energy_uj": energy_proxies(activity, steps), "layers": per_layer,
            "proxies": PROXIES, "constants": ENERGY_TABLE}
