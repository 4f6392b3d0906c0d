"""Activity counts (checked by brute force) and the energy proxies built from them."""

import json

import numpy as np

import hw_sim
from conftest import run_cli
from hw_sim import CubaNeurons, DenseLayer, Network
from hw_sim.energy import ENERGY_TABLE, count_activity, energy_proxies, energy_report
from hw_sim.random_networks import random_input, random_network


def test_dense_synops_are_spikes_times_nonzero_fan_out():
    weights = np.array([[10, 0, 5], [7, 3, 0]])
    network = Network(input_shape=(3,), layers=(DenseLayer(weights=weights,
                                                           neurons=CubaNeurons.create((2,), du=4095, dv=4096, vth=4)),))
    x = np.zeros((2, 4, 3), dtype=np.uint8)
    x[0, 0] = [1, 1, 1]     # fan-outs 2, 1, 1 -> 4 synops
    x[1, 2] = [0, 1, 0]     # 1 synop
    activity = count_activity(network, x)[0]
    assert activity.synops == (4 + 1) / 2 and activity.input_spikes == 4 / 2
    assert activity.neuron_updates == 2 * 4 and activity.ann_macs_per_step == 6
    result = network.run(x)
    assert activity.output_spikes == result.spikes[0].sum() / 2


def test_conv_synops_are_exact_at_the_borders():
    network = random_network(4, input_shape=(2, 7, 6), conv_channels=(3,), hidden=(), outputs=4)
    conv = network.layers[0]
    x = random_input(1, network, 2, 5, density=0.5)
    counted = count_activity(network, x)[0].synops * 2
    # brute force: for each output position, count input spikes under non-zero kernel taps
    padded = np.pad(x != 0, ((0, 0), (0, 0), (0, 0), (conv.padding[0],) * 2, (conv.padding[1],) * 2))
    c_out, h_out, w_out = conv.shape
    kh, kw = conv.weights.shape[2:]
    expected = 0
    for o in range(c_out):
        for i in range(h_out):
            for j in range(w_out):
                y, z = i * conv.stride[0], j * conv.stride[1]
                window = padded[:, :, :, y:y + kh, z:z + kw]
                expected += int((window * (conv.weights[o] != 0)).sum())
    assert counted == expected


def test_proxies_follow_the_table():
    network = random_network(2, hidden=(16,))
    x = random_input(2, network, 3, 10)
    activity = count_activity(network, x)
    proxies = energy_proxies(activity, 10)
    joules = {name: entry["joules"] for name, entry in ENERGY_TABLE.items()}
    synops = sum(a.synops for a in activity)
    updates = sum(a.neuron_updates for a in activity)
    active = sum(a.active_updates for a in activity)
    assert 0 < active < updates   # both neuron update energies take part
    assert np.isclose(proxies["snn_ac_45nm"], synops * joules["fp32_add"] * 1e6)
    macs = sum(a.ann_macs_per_step for a in activity) * 10
    assert np.isclose(proxies["ann_mac_45nm"], macs * joules["fp32_mac"] * 1e6)
    assert np.isclose(proxies["loihi"], (synops * joules["loihi_synop"] + active * joules["loihi_neuron_update_active"]
                                         + (updates - active) * joules["loihi_neuron_update_inactive"]) * 1e6)


def test_energy_command_json(tmp_path):
    network = random_network(3, hidden=(12,))
    hw_sim.save(network, tmp_path / "loihi.h5")
    np.save(tmp_path / "inputs.npy", random_input(3, network, 4, 10))
    done = run_cli("energy", tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"synops_per_inference", "neuron_updates_per_inference", "energy_uj"} <= set(report)
    assert report == {**energy_report(network, np.load(tmp_path / "inputs.npy")), "input": str(tmp_path / "inputs.npy")}
