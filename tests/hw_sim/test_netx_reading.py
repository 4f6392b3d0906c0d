"""Reading netx files without Lava: what is refused (one line naming file, layer and field), what is warned
about, and delays in the integer ONNX step and the energy counts. The Lava side is tests/hw_sim/test_netx_files.py."""

import dataclasses
import warnings

import h5py
import numpy as np
import pytest

import hw_sim
from hw_sim.random_networks import random_input, random_network, write_slayer_style_file


@pytest.fixture()
def slayer_file(tmp_path):
    path = tmp_path / "net.h5"
    write_slayer_style_file(path, 0, hidden=(10,), outputs=4, delays=3)
    return path


def _edit(path, edit):
    with h5py.File(path, "a") as handle:
        edit(handle)
    return path


@pytest.mark.parametrize("edit, expected", [
    (lambda h: h["layer/0/neuron/type"].__setitem__((), "SDNN"), "layer 0: neuron: sigma-delta neurons (type 'SDNN') are not modelled"),
    (lambda h: h["layer/1/neuron/type"].__setitem__((), "RF_IZ"), "layer 1: neuron: resonate-and-fire neurons (type 'RF_IZ')"),
    (lambda h: h["layer/0/neuron"].create_dataset("messageBits", data=3), "layer 0: neuron: field 'messageBits' (graded spikes) is not modelled"),
    (lambda h: h["layer/0/neuron"].create_dataset("sinDecay", data=3), "layer 0: neuron: field 'sinDecay' is not one hw_sim models"),
    (lambda h: h["layer/1"].create_dataset("refractory", data=3), "layer 1: field 'refractory' is not one hw_sim models"),
    (lambda h: (h["layer/0"].__delitem__("weight"), h["layer/0"].create_dataset("weight/real", data=np.ones((10, 24))),
                h["layer/0"].create_dataset("weight/imag", data=np.ones((10, 24)))), "layer 0: complex weights"),
    (lambda h: h["layer/1/type"].__setitem__(0, b"pool"), "layer 1: layer type 'pool' (pooling layers) is not modelled"),
    (lambda h: h["layer/0/delay"].__setitem__(0, -1.0), "layer 0: field 'delay' holds -1 < 0; Lava's DelayDense refuses"),
    (lambda h: (h["layer/0"].__delitem__("delay"), h["layer/0"].create_dataset("delay", data=np.ones(7))),
     "layer 0: field 'delay' of shape (7,) fits neither"),
    (lambda h: h["layer/0/neuron/iDecay"].__setitem__((), 0.5) if False else
     (h["layer/0/neuron"].__delitem__("iDecay"), h["layer/0/neuron"].create_dataset("iDecay", data=np.array([1.0, 2.0]))),
     "layer 0: neuron: field 'iDecay' differs between neurons"),
    (lambda h: h["layer/0/weight"].__setitem__((0, 0), np.nan), "layer 0: field 'weight' holds NaN or infinity"),
])
def test_what_hw_sim_does_not_model_is_refused_in_one_line(slayer_file, edit, expected):
    path = _edit(slayer_file, edit)
    with pytest.raises(hw_sim.LoihiFileError) as error:
        hw_sim.load(path)
    message = str(error.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message, message


def test_input_layer_with_neurons_is_refused(tmp_path):
    path = tmp_path / "net.h5"
    write_slayer_style_file(path, 1, input_layer=True)
    _edit(path, lambda h: h["layer/0"].create_group("neuron").create_dataset("type", data="CUBA", dtype=h5py.string_dtype()))
    with pytest.raises(hw_sim.LoihiFileError, match="layer 0: input layers with neurons"):
        hw_sim.load(path)


def test_float_weights_are_cast_as_netx_casts_them(slayer_file):
    """netx reads weight and bias with astype(int): truncation toward zero, not a refusal."""
    exact = hw_sim.load(slayer_file)
    with h5py.File(slayer_file, "a") as handle:
        weight = handle["layer/1/weight"][()]
        handle["layer/1/weight"][...] = weight + np.where(weight >= 0, 0.75, -0.75)
    assert hw_sim.load(slayer_file) == exact


def test_slayer_descriptors_are_accepted_and_ignored_fields_warned(slayer_file):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hw_sim.load(slayer_file)   # inFeatures, outFeatures, refDelay, gradedSpike: no warning
    _edit(slayer_file, lambda h: h["layer/0/neuron"].create_dataset("weight_exp", data=2))
    with pytest.warns(hw_sim.LoihiFileWarning, match="layer 0: neuron: field 'weight_exp'"):
        hw_sim.load(slayer_file)


def test_input_shape_of_a_dense_first_file(tmp_path):
    path = tmp_path / "net.h5"
    write_slayer_style_file(path, 2, input_size=24)
    assert hw_sim.load(path).input_shape == (24,)
    assert hw_sim.load(path, input_shape=(2, 3, 4)).input_shape == (2, 3, 4)   # flattened in (C, H, W) order
    with pytest.raises(hw_sim.LoihiFileError, match="input_shape \\(5,\\) has 5 values, but the first dense layer takes 24"):
        hw_sim.load(path, input_shape=(5,))


def test_saved_delays_round_trip_and_stay_netx_exact(tmp_path, slayer_file):
    network = hw_sim.load(slayer_file)
    assert network.layers[0].delays is not None
    assert hw_sim.netx_exact(network)
    again = hw_sim.load(hw_sim.save(network, tmp_path / "again.h5"))
    assert again == network
    with h5py.File(tmp_path / "again.h5") as handle:
        assert handle["layer/1/delay"].shape == network.layers[0].weights.shape


def _with_delays(network, seed, largest=3):
    rng = np.random.default_rng(seed)
    return dataclasses.replace(network, layers=tuple(
        dataclasses.replace(layer, delays=rng.integers(0, largest + 1, layer.weights.shape),
                            recurrent_delays=None if layer.recurrent_weights is None
                            else rng.integers(0, largest + 1, layer.recurrent_weights.shape))
        for layer in network.layers))


@pytest.mark.parametrize("seed, options", [(0, {}), (1, dict(recurrent=True)), (7, dict(recurrent=True, readout=True))])
def test_integer_onnx_step_holds_delays(tmp_path, seed, options):
    from export.onnx_export import export_integer_onnx, run_onnx
    network = _with_delays(random_network(seed, **options), seed)
    x = random_input(seed, network, 3, 30)
    result = network.run(x, record_states=True)
    expected = result.v[-1] if network.layers[-1].readout else result.spikes[-1]
    assert np.abs(expected).sum() > 0
    assert np.array_equal(run_onnx(export_integer_onnx(network, tmp_path / "int.onnx"), x), expected)


def test_delays_shift_activity_in_the_energy_counts():
    from hw_sim.energy import count_activity
    plain = random_network(43, hidden=(24, 16), bias=False)
    delayed = _with_delays(plain, 43, largest=6)
    x = random_input(43, plain, 4, 20, density=0.4)
    a, b = count_activity(plain, x), count_activity(delayed, x)
    # The first layer sees the same input spikes; what its neurons do, and so all that follows, moves in time.
    assert a[0].input_spikes == b[0].input_spikes
    assert [layer.active_updates for layer in a] != [layer.active_updates for layer in b]
    assert plain.latency == 3
    slow = dataclasses.replace(delayed, layers=tuple(dataclasses.replace(layer, delays=layer.delays + 2)
                                                     for layer in delayed.layers))
    assert slow.latency == 3 + 3 * 2
