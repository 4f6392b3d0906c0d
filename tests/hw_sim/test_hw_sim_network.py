"""The network description, loihi.h5 reading/writing and validation, and simulator invariants."""

import h5py
import numpy as np
import pytest

import hw_sim
from hw_sim import ConvLayer, CubaNeurons, DenseLayer, LoihiFileError, Network, NetworkError, SignMode
from hw_sim.random_networks import random_input, random_network

NETWORK_KINDS = {
    "dense": dict(),
    "stress": dict(stress=True),
    "recurrent_readout": dict(recurrent=True, readout=True),
    "conv": dict(input_shape=(2, 9, 7), conv_channels=(3, 4), hidden=(12,)),
    "graded": dict(input_message_bits=8),
    "netx": dict(input_shape=(2, 8, 8), conv_channels=(3,), hidden=(16,), netx_compatible=True, readout=True),
}


@pytest.mark.parametrize("kind", NETWORK_KINDS)
def test_loihi_h5_round_trip_is_identical(tmp_path, kind):
    network = random_network(3, **NETWORK_KINDS[kind])
    path = hw_sim.save(network, tmp_path / "loihi.h5")
    loaded = hw_sim.load(path)
    assert loaded == network
    x = random_input(1, network, 2, 12)
    for a, b in zip(network.run(x).spikes, loaded.run(x).spikes):
        assert np.array_equal(a, b)
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_netx_layout_fields(tmp_path):
    network = random_network(3, **NETWORK_KINDS["netx"])
    assert hw_sim.netx_exact(network)
    path = hw_sim.save(network, tmp_path / "loihi.h5")
    with h5py.File(path) as handle:
        assert bool(handle.attrs["netx_exact"])
        types = [handle[f"layer/{i}/type"][0].decode() for i in range(len(handle["layer"]))]
        assert types == ["input", "conv", "flatten", "dense", "dense"]
        assert handle["layer/0/shape"][()].tolist() == [2, 8, 8]
        conv = handle["layer/1"]
        assert conv["neuron/iDecay"][()] == network.layers[0].neurons.du + 1
        assert conv["neuron/vThMant"][()] == network.layers[0].neurons.vth
        assert "neuron" not in handle["layer/4"], "a readout is a dense layer without a neuron group"


def test_file_without_lava_groups_is_read_as_netx_reads_it(tmp_path):
    """A slayer-style file (standard fields only) means what netx makes of it."""
    network = random_network(5, **NETWORK_KINDS["netx"])
    path = hw_sim.save(network, tmp_path / "loihi.h5")
    with h5py.File(path, "a") as handle:
        for name in handle["layer"]:
            if "lava" in handle[f"layer/{name}"]:
                del handle[f"layer/{name}/lava"]
        handle.attrs["netx_exact"] = False
    netx_view = hw_sim.load(path)
    assert netx_view != network and hw_sim.equivalent(netx_view, network)
    x = random_input(2, network, 3, 15)
    for a, b in zip(network.run(x).spikes, netx_view.run(x).spikes):
        assert np.array_equal(a, b)


def test_network_that_netx_cannot_express_is_flagged(tmp_path):
    network = random_network(1, stress=True)
    assert not hw_sim.netx_exact(network)
    with h5py.File(hw_sim.save(network, tmp_path / "loihi.h5")) as handle:
        assert not bool(handle.attrs["netx_exact"])


def _corrupt(tmp_path, edit):
    path = hw_sim.save(random_network(3, **NETWORK_KINDS["netx"]), tmp_path / "loihi.h5")
    with h5py.File(path, "a") as handle:
        edit(handle)
    return path


@pytest.mark.parametrize("edit, expected", [
    (lambda h: h["layer/1/lava/du"].__setitem__((), 5000), "layer 1: lava/du must lie in [-1, 4095]"),
    (lambda h: (h["layer/3/lava"].__delitem__("weight_exp")), "layer 3: lava/missing field 'weight_exp'"),
    (lambda h: (h["layer/3/lava"].__delitem__("weight"), h["layer/3/lava"].create_dataset("weight", data=np.full((16, 192), 0.5))),
     "layer 3: lava/field 'weight' must be integer-valued"),
    (lambda h: (h["layer/3/lava"].__delitem__("bias_mant"), h["layer/3/lava"].create_dataset("bias_mant", data=np.zeros(7))),
     "layer 3: lava/bias_mant shape (7,) differs from bias_exp shape (16,)"),
    (lambda h: (h["layer/3/lava"].__delitem__("weight"), h["layer/3/lava"].create_dataset("weight", data=np.zeros((16, 5)))),
     "dense weights expect 5 inputs"),
    (lambda h: h["layer/2"].__delitem__("type") or h["layer/2"].create_dataset("type", data=np.array([b"pool"])),
     "layer 2: layer type 'pool' (pooling layers) is not modelled by hw_sim"),
    (lambda h: h["layer/3/weight"].__setitem__((0, 0), 7), "claims netx_exact but its netx fields disagree"),
    (lambda h: h.__delitem__("layer"), "missing group 'layer'"),
])
def test_invalid_files_give_one_line_errors_naming_file_layer_and_field(tmp_path, edit, expected):
    path = _corrupt(tmp_path, edit)
    with pytest.raises(LoihiFileError) as error:
        hw_sim.load(path)
    message = str(error.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message


def test_not_hdf5_and_missing_file(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(LoihiFileError, match="junk.h5: not an HDF5 file"):
        hw_sim.load(tmp_path / "junk.h5")
    with pytest.raises(LoihiFileError, match="no such file"):
        hw_sim.load(tmp_path / "absent.h5")


def test_description_validation():
    neurons = CubaNeurons.create((3,), du=10, dv=20, vth=100)
    with pytest.raises(NetworkError, match="dv must lie in"):
        CubaNeurons.create((3,), du=10, dv=5000, vth=100)
    with pytest.raises(NetworkError, match="bias_mant must lie in"):
        CubaNeurons.create((3,), du=10, dv=20, vth=100, bias_mant=1 << 15)
    with pytest.raises(NetworkError, match="weights must be integer-valued"):
        DenseLayer(weights=np.full((3, 4), 0.5), neurons=neurons)
    with pytest.raises(NetworkError, match="delays must lie in"):
        DenseLayer(weights=np.ones((3, 4)), neurons=neurons, delays=np.full((3, 4), 63))
    with pytest.raises(NetworkError, match="delays must have the weights' shape"):
        DenseLayer(weights=np.ones((3, 4)), neurons=neurons, delays=np.ones((3,)))
    with pytest.raises(NetworkError, match="recurrent_delays need recurrent_weights"):
        DenseLayer(weights=np.ones((3, 4)), neurons=neurons, recurrent_delays=np.ones((3, 3)))
    with pytest.raises(NetworkError, match="readout layer needs vth >= 131072"):
        DenseLayer(weights=np.ones((3, 4)), neurons=neurons, readout=True)
    with pytest.raises(NetworkError, match="layer 1: dense weights expect 4 inputs"):
        Network(input_shape=(4,), layers=(DenseLayer(weights=np.ones((3, 4)), neurons=neurons),
                                          DenseLayer(weights=np.ones((3, 4)), neurons=neurons)))
    with pytest.raises(NetworkError, match="conv channels do not fit"):
        ConvLayer(weights=np.ones((2, 3, 3, 3)), neurons=CubaNeurons.create((2, 2, 2), du=0, dv=0, vth=1),
                  input_shape=(2, 4, 4))
    layer = DenseLayer(weights=np.ones((3, 4)), neurons=neurons)
    with pytest.raises(ValueError):
        layer.weights[0, 0] = 5  # frozen arrays


def test_results_do_not_depend_on_batch_size_or_composition():
    network = random_network(7, input_shape=(2, 7, 7), conv_channels=(3,), hidden=(20,), recurrent=True)
    x = random_input(3, network, 6, 20)
    together = network.run(x, record_states=True)
    for i in (0, 5):
        alone = network.run(x[i:i + 1], record_states=True)
        for a, b in zip(together.spikes + together.u + together.v, alone.spikes + alone.u + alone.v):
            assert np.array_equal(a[i:i + 1], b)


def test_timing_one_step_of_delay_per_layer():
    """A spike sent at Lava step 1 (input column 0) reaches layer k's neurons at step k + 1."""
    neurons = CubaNeurons.create((1,), du=4095, dv=4096, vth=0)   # fire on any positive input, no memory
    layers = tuple(DenseLayer(weights=np.array([[2]]), neurons=neurons) for _ in range(3))
    network = Network(input_shape=(1,), layers=layers)
    x = np.zeros((1, 6, 1), dtype=np.uint8)
    x[0, 0, 0] = 1
    result = network.run(x)
    assert [int(np.flatnonzero(s[0, :, 0])[0]) for s in result.spikes] == [1, 2, 3]


def test_u_wraps_and_v_saturates():
    neurons = CubaNeurons.create((1,), du=0, dv=0, vth=(1 << 17) - 1)
    network = Network(input_shape=(8,), layers=(DenseLayer(weights=np.full((1, 8), 255), neurons=neurons,
                                                            weight_exp=7, sign_mode=SignMode.EXCITATORY),))
    result = network.run(np.ones((1, 30, 8), dtype=np.uint8), record_states=True)
    u, v = result.u[0][0, :, 0], result.v[0][0, :, 0]
    assert u.max() <= 1 << 23 and u.min() < 0, "u must wrap around to negative values"
    assert np.abs(v).max() == (1 << 23) - 1, "v must saturate"


def test_binary_input_treats_any_nonzero_value_as_one_spike():
    network = random_network(2)
    x = random_input(2, network, 2, 10)
    graded = x * np.random.default_rng(0).integers(1, 9, size=x.shape)
    for a, b in zip(network.run(x).spikes, network.run(graded).spikes):
        assert np.array_equal(a, b)


def test_graded_input_is_multiplied():
    neurons = CubaNeurons.create((1,), du=4095, dv=4096, vth=(1 << 17) - 1)
    layer = DenseLayer(weights=np.array([[10]]), neurons=neurons)
    network = Network(input_shape=(1,), layers=(layer,), input_message_bits=8)
    result = network.run(np.array([[[7], [0]]]), record_states=True)
    assert result.u[0][0, 1, 0] == 7 * 10 << 6


def test_bad_input_shape_and_values():
    network = random_network(2)
    with pytest.raises(NetworkError, match="input must have shape"):
        network.run(np.zeros((1, 5, 31)))
    with pytest.raises(NetworkError, match="integer-valued"):
        network.run(np.full((1, 5, 32), 0.5))


def test_float64_and_int64_neuron_paths_agree():
    """The float64 recursion (used when no int32 wrap can happen) equals the int64 one, states included."""
    from hw_sim.loihi import _run_neurons_float, _run_neurons_int, dense_synaptic_input
    for seed, options in ((5, dict()), (6, dict(recurrent=True)), (7, dict(bias=True, hidden=(30,)))):
        network = random_network(seed, **options)
        layer = network.layers[0]
        x = random_input(seed, network, 4, 25)
        synaptic = dense_synaptic_input(layer, x.reshape(100, -1), 1).reshape(4, 25, -1)
        recurrent = None
        if layer.recurrent_weights is not None:
            from hw_sim.arith import prepare_dense_weights
            from hw_sim.loihi import delay_groups
            recurrent = delay_groups(prepare_dense_weights(layer.recurrent_weights,
                                                           layer.effective_sign_mode(layer.recurrent_weights),
                                                           layer.num_weight_bits), None)
        a = _run_neurons_int(layer, synaptic, recurrent, True)
        b = _run_neurons_float(layer, synaptic, recurrent, True)
        assert a[0].sum() > 0
        assert all(np.array_equal(p, q) for p, q in zip(a, b))


def test_float32_drive_path_equals_the_integer_path():
    """run() takes the float32 drive (no integer round trip) wherever the bounds allow; the int64 recursion
    on the integer synaptic sums must give the same spikes, u and v (sparse and dense inputs, exponents)."""
    from hw_sim.loihi import _run_neurons_int, dense_synaptic_input
    checked = 0
    for seed, density in ((3, 0.01), (4, 0.3), (9, 0.05), (10, 0.5)):
        network = random_network(seed, hidden=(40, 20), bias=seed % 2 == 0)
        x = random_input(seed, network, 3, 30, density=density)
        result = network.run(x, record_states=True)
        layer_input = x
        for k, layer in enumerate(network.layers):
            synaptic = dense_synaptic_input(layer, layer_input.reshape(90, -1), 1).reshape(3, 30, -1)
            spikes, us, vs = _run_neurons_int(layer, synaptic, None, True)
            assert np.array_equal(spikes, result.spikes[k]) and np.array_equal(us, result.u[k])
            assert np.array_equal(vs, result.v[k])
            checked += int(spikes.sum())
            layer_input = spikes
    assert checked > 0
