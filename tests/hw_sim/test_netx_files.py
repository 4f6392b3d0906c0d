"""netx files as lava-dl writes them, run by Intel's netx on the file itself and by hw_sim: every spike, u, v.

Real parts only: files written by lava-dl's slayer ``export_hdf5`` (in .venv-lava), files laid out the way
slayer writes them (random, seeded), Intel's ``netx.hdf5.Network`` running those very bytes in Lava, and
negative cases built so that the two sides must differ, to show the verifier can fail.
"""

import dataclasses
import json
import subprocess
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import hw_sim
from conftest import ROOT, run_cli
from hw_sim.lava import choose_mode
from hw_sim.random_networks import random_input, random_network, write_slayer_style_file

pytestmark = pytest.mark.lava


def spikes_in(network, steps=30, batch=3, seed=0, density=0.3):
    rng = np.random.default_rng(seed)
    return (rng.random((batch, steps, *network.input_shape)) < density).astype(np.int64)


def assert_bit_exact(report):
    assert report.bit_exact, report.summary()
    assert report.states_compared == 2 * report.spikes_compared > 0


@pytest.fixture(scope="module")
def slayer_files(tmp_path_factory):
    """Files exported by lava-dl's own slayer blocks (tests/lava_dl/slayer_export.py in .venv-lava)."""
    out = tmp_path_factory.mktemp("slayer")
    python = hw_sim.lava.lava_python()
    done = subprocess.run([str(python), str(ROOT / "tests/lava_dl/slayer_export.py"), str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.parametrize("name, input_shape", [("dense_delays.h5", None), ("recurrent_delays.h5", None),
                                               ("conv_first.h5", (2, 10, 12))])
def test_slayer_exports_run_exactly_as_intel_netx_runs_them(slayer_files, name, input_shape):
    path = slayer_files / name
    with h5py.File(path) as handle:
        assert "input" not in [handle[f"layer/{k}/type"][0].decode() for k in handle["layer"]]
        assert handle["layer/0/weight"].dtype.kind == "f"   # slayer stores weights as floats
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        network = hw_sim.load(path, input_shape=input_shape)
    delayed = [layer for layer in network.layers if getattr(layer, "max_delay", 0)]
    assert delayed, "slayer's delays must reach the description"
    x = spikes_in(network)
    ours = network.run(x, record_states=True)
    for layer, spikes, v in zip(network.layers, ours.spikes, ours.v):
        assert (np.abs(v).sum() if getattr(layer, "readout", False) else spikes.sum()) > 0, "a silent layer proves nothing"
    # The delays change the result: without them the same weights give other spikes.
    undelayed = dataclasses.replace(network, layers=tuple(
        dataclasses.replace(layer, delays=None, recurrent_delays=None) if hasattr(layer, "delays") else layer
        for layer in network.layers))
    assert any(not np.array_equal(a, b) for a, b in zip(ours.v, undelayed.run(x, record_states=True).v))
    assert_bit_exact(hw_sim.verify(network, x, builder="netx", netx_file=path))


def test_conv_first_file_without_input_shape_is_a_clear_error(slayer_files):
    with pytest.raises(hw_sim.LoihiFileError, match="no input layer and starts with a conv layer: give the input shape"):
        hw_sim.load(slayer_files / "conv_first.h5")
    # netx's own (W, H, C) order is accepted too; the channel count tells the two orders apart.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert hw_sim.load(slayer_files / "conv_first.h5", input_shape=(12, 10, 2)).input_shape == (2, 10, 12)
        with pytest.raises(hw_sim.LoihiFileError, match="does not hold the first conv layer's 2 input channels"):
            hw_sim.load(slayer_files / "conv_first.h5", input_shape=(3, 10, 12))


RANDOM_FILES = {
    "dense": dict(delays=0),
    "dense_delays": dict(delays=5, hidden=(24, 16)),
    "conv_first_delays": dict(input_shape=(2, 9, 7), conv_channels=(3,), delays=3),
    "recurrent": dict(recurrent=True),
    "input_layer_bias_delays": dict(input_layer=True, bias=True, delays=2),
}


@pytest.mark.parametrize("case", RANDOM_FILES)
def test_random_slayer_style_files_equal_intel_netx(tmp_path, case):
    options = RANDOM_FILES[case]
    for seed in (0, 1):
        path = tmp_path / f"{case}{seed}.h5"
        write_slayer_style_file(path, seed, **options)
        network = hw_sim.load(path, input_shape=options.get("input_shape"))
        x = spikes_in(network, steps=25, seed=seed, density=0.2)
        assert all(s.sum() > 0 for s in network.run(x).spikes)
        assert_bit_exact(hw_sim.verify(network, x, builder="netx", netx_file=path))


def test_netx_weight_quirks_are_reproduced_not_refused(tmp_path):
    """Weights in [-128, 0] with -128 (netx doubles them, Lava reads them as inhibitory and clips -256 to
    -255, so netx is not exact), 9 weight bits (mixed odd weights beyond 128) with a single-signed recurrent
    half (Lava zeroes it), a delay beyond 62 (netx clamps it)."""
    path = tmp_path / "quirks.h5"
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as handle:
        def layer(index, kind, weight, **extra):
            group = handle.create_group(f"layer/{index}")
            group.create_dataset("type", (1,), "S10", [kind.encode()])
            group.create_dataset("shape", data=np.array([weight.shape[0]]))
            group.create_dataset("weight", data=weight.astype(np.float32))
            for key, value in extra.items():
                group.create_dataset(key, data=value)
            neuron = group.create_group("neuron")
            neuron.create_dataset("type", data="CUBA", dtype=h5py.string_dtype())
            for key, value in (("iDecay", 1024), ("vDecay", 128), ("vThMant", 60), ("refDelay", 1)):
                neuron.create_dataset(key, data=value)
        inhibitory = -rng.integers(0, 129, size=(12, 16))
        inhibitory[0, 0] = -128
        layer(0, "dense", inhibitory, bias=np.full(12, 1500.0))   # inhibitory input against a drive
        layer(1, "dense_rec", rng.choice([-201, -77, 3, 155, 253], size=(10, 12)),
              weight_rec=rng.integers(0, 40, size=(10, 10)))
        layer(2, "dense", rng.integers(-60, 90, size=(4, 10)), delay=np.array([0, 70, 3, 1]))
    with pytest.warns(hw_sim.LoihiFileWarning, match="netx clamps delays"):
        network = hw_sim.load(path)
    assert network.layers[0].weights.min() == -256 and network.layers[1].num_weight_bits == 9
    assert network.layers[2].max_delay == 62
    x = spikes_in(network, steps=70, batch=2, density=0.4)
    ours = network.run(x)
    assert all(s.sum() > 0 for s in ours.spikes)
    assert_bit_exact(hw_sim.verify(network, x, builder="netx", netx_file=path))


def test_description_builder_runs_delays_exactly_back_to_back_and_per_sample():
    network = random_network(43, hidden=(24, 16), bias=False, delays=4)
    assert choose_mode(network) == "concat" and all(layer.max_delay for layer in network.layers)
    x = random_input(43, network, 4, 20, density=0.4)
    ours = network.run(x, record_states=True)
    assert all(s.sum() > 0 for s in ours.spikes)
    assert_bit_exact(hw_sim.compare(ours, hw_sim.lava.run(network, x, record_states=True, mode="concat")))
    recurrent = random_network(42, hidden=(20,), recurrent=True, delays=3)
    assert recurrent.layers[0].recurrent_delays is not None and choose_mode(recurrent) == "per_sample"
    x = random_input(42, recurrent, 2, 20)
    assert_bit_exact(hw_sim.verify(recurrent, x))


def test_recurrent_network_is_never_batched_back_to_back(tmp_path):
    """A recurrent layer that keeps firing on its own: buffered recurrent spikes would cross a reset, so
    samples run in fresh networks and the verifier reports no false difference."""
    from hw_sim.network import CubaNeurons, DenseLayer, Network
    size = 8
    layer = DenseLayer(weights=np.eye(size, 4, dtype=np.int64) * 100,
                       neurons=CubaNeurons.create((size,), du=4095, dv=4096, vth=50),
                       recurrent_weights=np.roll(np.eye(size, dtype=np.int64), 1, axis=0) * 100)
    network = Network(input_shape=(4,), layers=(layer,))
    assert choose_mode(network) == "per_sample" and choose_mode(network, "netx") == "per_sample"
    x = np.zeros((3, 12, 4), dtype=np.int64)
    x[:, 0, 0] = 1
    ours = network.run(x)
    assert ours.spikes[0][:, -1].sum() == 3, "the activity must outlast each sample"
    assert_bit_exact(hw_sim.verify(network, x, builder="netx", netx_file=hw_sim.save(network, tmp_path / "loihi.h5")))


# ------------------------------------------------------------------------------------------------------
# The verifier can fail: inputs and files built so that the two sides must differ.

def _edited_copy(source: Path, target: Path, edit) -> Path:
    target.write_bytes(source.read_bytes())
    with h5py.File(target, "a") as handle:
        edit(handle)
    return target


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("negative") / "base.h5"
    write_slayer_style_file(path, 7, hidden=(12,), outputs=5, delays=3)
    return path


def test_a_changed_weight_is_found_and_named(base_file, tmp_path):
    def edit(handle):
        weight = handle["layer/1/weight"]
        weight[2, 3] = weight[2, 3] + 100
    other = _edited_copy(base_file, tmp_path / "changed.h5", edit)
    network = hw_sim.load(base_file)
    x = spikes_in(network, steps=25, density=0.5)
    report = hw_sim.verify(network, x, builder="netx", netx_file=other)
    assert not report.bit_exact and report.state_mismatches > 0
    first = report.first_difference
    assert first.layer == 1 and first.expected != first.actual
    assert f"layer 1, neuron ({first.neuron[0]},)" in report.summary() and report.summary().startswith("DIFFERENT")


def test_a_voltage_only_difference_is_found(base_file, tmp_path):
    """vDecay changed and a threshold no voltage reaches: u and the spikes agree, only v differs."""
    def edit(handle):
        handle["layer/1/neuron/vDecay"][()] = (int(handle["layer/1/neuron/vDecay"][()]) + 7) % 4096
        handle["layer/1/neuron/vThMant"][()] = (1 << 17) - 1
    quiet = _edited_copy(base_file, tmp_path / "quiet.h5", lambda h: h["layer/1/neuron/vThMant"].__setitem__((), (1 << 17) - 1))
    other = _edited_copy(base_file, tmp_path / "vdecay.h5", edit)
    network = hw_sim.load(quiet)
    x = spikes_in(network, steps=25, density=0.5)
    report = hw_sim.verify(network, x, builder="netx", netx_file=other)
    assert report.spike_mismatches == 0 and report.state_mismatches > 0
    assert report.first_difference.quantity == "v" and report.first_difference.layer == 1


def test_a_current_only_difference_is_found():
    """compare() on two results that differ only in one u value (no run can make u alone differ)."""
    network = random_network(5)
    x = random_input(5, network, 2, 10)
    ours = network.run(x, record_states=True)
    theirs = network.run(x, record_states=True)
    theirs.u[0][1, 4, 7] += 1
    report = hw_sim.compare(ours, theirs)
    assert (report.spike_mismatches, report.state_mismatches) == (0, 1)
    d = report.first_difference
    assert (d.quantity, d.sample, d.step, d.layer, d.neuron, d.actual - d.expected) == ("u", 1, 4, 0, (7,), 1)


def test_a_delay_ignored_on_one_side_is_found(base_file, tmp_path):
    other = _edited_copy(base_file, tmp_path / "nodelay.h5", lambda h: h["layer/0"].__delitem__("delay"))
    network = hw_sim.load(base_file)
    assert network.layers[0].max_delay > 0
    x = spikes_in(network, steps=25, density=0.5)
    report = hw_sim.verify(network, x, builder="netx", netx_file=other)
    assert not report.bit_exact and report.first_difference.layer == 0


def test_sbnn_verify_netx_judges_the_users_file_itself(tmp_path):
    """Our loihi.h5 whose standard netx fields were changed behind its exact-parameter group: hw_sim reads
    the group, Intel's netx reads the fields. `--builder netx` must report it (exit 1, first difference
    named); before, it verified hw_sim's copy and said bit-exact."""
    network = random_network(8, hidden=(12,), netx_compatible=True)
    path = hw_sim.save(network, tmp_path / "loihi.h5")

    def edit(handle):
        handle.attrs["netx_exact"] = False
        handle["layer/2/weight"][0, :] = 0
    _edited_copy(path, tmp_path / "edited.h5", edit)
    # --batch-size 1: two Lava runs whose reports are merged (counts summed, earliest difference kept)
    done = run_cli("verify", tmp_path / "edited.h5", "--builder", "netx", "--limit", "2", "--steps", "20", "--json",
                    "--batch-size", "1")
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert not result["bit_exact"] and result["first_difference"]["layer"] == 1
    assert result["samples"] == 2 and result["spikes_compared"] == 2 * 20 * (12 + 10)
    plain = run_cli("verify", tmp_path / "edited.h5", "--builder", "description", "--limit", "2", "--steps", "20")
    assert plain.returncode == 0, plain.stderr


def test_sbnn_verify_accepts_a_plain_netx_file_netx_runs(tmp_path, base_file):
    """Weights in [-128, 0] including -128: netx runs the file, so the verifier must too (it refused it)."""
    def edit(handle):
        weight = handle["layer/0/weight"]
        values = -np.abs(weight[()]) // 2
        values[0, 0] = -128
        weight[...] = values
    path = _edited_copy(base_file, tmp_path / "inhibitory.h5", edit)
    done = run_cli("verify", path, "--builder", "netx", "--limit", "2", "--steps", "20", "--density", "0.5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bit-exact" in done.stdout


def test_sbnn_conv_first_file_needs_input_shape(tmp_path):
    path = tmp_path / "conv.h5"
    write_slayer_style_file(path, 2, input_shape=(2, 8, 6), conv_channels=(3,), delays=2)
    done = run_cli("simulate", path, "--steps", "10")
    assert done.returncode == 2 and "--input-shape" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = run_cli("verify", path, "--builder", "netx", "--input-shape", "2,8,6", "--limit", "2", "--steps", "15")
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------------------------------
# More of what slayer users export: lava-dl's own blocks, written by slayer's export_hdf5 in .venv-lava.

SLAYER_MORE = r'''
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from hw_sim.lava_worker import _import_netx
_import_netx()
import h5py, torch
import lava.lib.dl.slayer as slayer

torch.manual_seed(1)
c = slayer.block.cuba
N = {"threshold": 1.0, "current_decay": 0.25, "voltage_decay": 0.03}
NORM = dict(N, norm=slayer.neuron.norm.MeanOnlyBatchNorm)
hook10 = lambda x, descale=False: slayer.utils.quantize_hook_fx(x, num_bits=10, descale=descale)
nets = {
    # two convs (rectangular kernel, stride and padding pairs; groups and dilation), Flatten, Affine readout
    "conv_conv_affine": ([c.Conv(N, 2, 4, (3, 5), stride=(1, 2), padding=(1, 2), weight_scale=2),
                          c.Conv(N, 4, 4, 3, padding=2, dilation=2, groups=2, weight_scale=2),
                          c.Flatten(), c.Affine(N, 4 * 8 * 5, 5, weight_scale=2)], (2, 8, 10)),
    # bias from a normalisation (its running mean), weight_norm, a 10-bit quantisation hook
    "dense_norm_hook": ([c.Dense(NORM, 20, 16, weight_scale=2, pre_hook_fx=hook10),
                         c.Dense(NORM, 16, 6, weight_scale=2, weight_norm=True)], (20,)),
    "single_affine": ([c.Affine(N, 20, 6, weight_scale=2)], (20,)),
    "recurrent_first": ([c.Recurrent(N, 12, 12, weight_scale=2), c.Dense(N, 12, 4, weight_scale=2)], (12,)),
    "conv_pool": ([c.Conv(N, 2, 4, 3, padding=1, weight_scale=2), c.Pool(N, 2, weight_scale=2)], (2, 8, 8)),
    "kwta": ([c.Dense(N, 20, 16, weight_scale=2), c.KWTA(N, 16, 8, num_winners=2, weight_scale=2)], (20,)),
    "input_block": ([c.Input(N, weight=2, bias=0.1), c.Dense(N, 20, 8, weight_scale=2)], (20,)),
    "sdnn": ([slayer.block.sigma_delta.Input({"threshold": 0.1, "activation": torch.relu}),
              slayer.block.sigma_delta.Dense({"threshold": 0.1, "activation": torch.relu}, 20, 6)], (20,)),
    "rf": ([slayer.block.rf.Dense({"threshold": 1.0, "period": 10, "decay": 0.1}, 20, 6)], (20,)),
}
for name, (blocks, shape) in nets.items():
    blocks = torch.nn.ModuleList(blocks)
    with torch.no_grad():
        x = (torch.rand(2, *shape, 8) < 0.3).float()
        for block in blocks:
            x = block(x)
        if name == "dense_norm_hook":   # trained weights beyond the 8 bits that the 10-bit hook allows
            blocks[0].synapse.weight.data *= 12
    with h5py.File(Path(sys.argv[1]) / f"{name}.h5", "w") as handle:
        for index, block in enumerate(blocks):
            block.export_hdf5(handle.create_group(f"layer/{index}"))
'''


@pytest.fixture(scope="module")
def more_slayer_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("slayer_more")
    done = subprocess.run([str(hw_sim.lava.lava_python()), "-c", SLAYER_MORE, str(out), str(ROOT)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.parametrize("name, input_shape", [("conv_conv_affine", (2, 8, 10)), ("dense_norm_hook", None),
                                               ("single_affine", None), ("recurrent_first", None)])
def test_more_slayer_blocks_run_exactly_as_intel_netx_runs_them(more_slayer_files, name, input_shape):
    path = more_slayer_files / f"{name}.h5"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        network = hw_sim.load(path, input_shape=input_shape)
    if name == "dense_norm_hook":
        with h5py.File(path) as handle:
            assert np.abs(handle["layer/0/weight"][()]).max() > 256 and np.abs(handle["layer/0/bias"][()]).max() >= 1
        # netx clips the 10-bit weights to [-256, 254] without a word; the reader says so
        assert any("netx 0.6 clips mixed-sign weights" in str(w.message) for w in caught)
        assert network.layers[0].weights.min() >= -256 and np.any(network.layers[0].neurons.bias)
    x = spikes_in(network, steps=20, batch=2, density=0.3)
    ours = network.run(x, record_states=True)
    for layer, spikes, v in zip(network.layers, ours.spikes, ours.v):
        assert (np.abs(v).sum() if getattr(layer, "readout", False) else spikes.sum()) > 0, "a silent layer proves nothing"
    assert_bit_exact(hw_sim.verify(network, x, builder="netx", netx_file=path))


@pytest.mark.parametrize("name, expected", [
    ("conv_pool", "layer 1: layer type 'pool' (pooling layers) is not modelled"),
    ("kwta", "layer 1: is an empty group (slayer's export_hdf5 writes nothing for some blocks, e.g. KWTA"),
    ("input_block", "layer 0: input layers with neurons (slayer's Input block) are not modelled"),
    ("sdnn", "layer 0: neuron: sigma-delta neurons (type 'SDNN') are not modelled"),
    ("rf", "layer 0: neuron: resonate-and-fire neurons (type 'RF_PHASE') are not modelled"),
])
def test_slayer_blocks_hw_sim_does_not_model_are_refused_by_name(more_slayer_files, name, expected):
    path = more_slayer_files / f"{name}.h5"
    done = run_cli("simulate", path, "--input-shape", "2,8,8", "--steps", "5") if name == "conv_pool" else \
        run_cli("simulate", path, "--steps", "5")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def _slayer_style_dense(path: Path, edit) -> Path:
    write_slayer_style_file(path, 4, hidden=(12,), outputs=5, bias=True)
    with h5py.File(path, "a") as handle:
        edit(handle)
    return path


def _replace(handle, key, value):
    del handle[key]
    handle.create_dataset(key, data=value)


def test_one_bias_for_a_dense_layer_and_a_scalar_shape_run_as_netx_runs_them(tmp_path):
    """netx hands a dense layer's bias to Lava as it is (one value: every neuron gets it) and takes
    prod(shape) neurons, a 0-d shape included; both were refused."""
    def edit(handle):
        _replace(handle, "layer/0/bias", np.array([90.0], dtype=np.float32))
        _replace(handle, "layer/1/bias", np.float32(-40.0))
        _replace(handle, "layer/1/shape", np.int64(handle["layer/1/shape"][0]))
    path = _slayer_style_dense(tmp_path / "one_bias.h5", edit)
    network = hw_sim.load(path)
    assert np.all(network.layers[0].neurons.bias == 90 << 6) and np.all(network.layers[1].neurons.bias == -40 << 6)
    x = spikes_in(network, steps=20, batch=2, density=0.3)
    assert all(s.sum() > 0 for s in network.run(x).spikes)
    assert_bit_exact(hw_sim.verify(network, x, builder="netx", netx_file=path))


@pytest.mark.parametrize("edit, expected", [
    (lambda h: _replace(h, "layer/0/neuron/vThMant", np.float64(h["layer/0/neuron/vThMant"][()])),
     "layer 0: neuron: field 'vThMant' is stored as a float; netx 0.6 hands it to Lava's fixed-point LIF"),
    (lambda h: _replace(h, "layer/1/shape", h["layer/1/shape"][()].astype(np.float64)),
     "layer 1: field 'shape' holds floats; netx 0.6 fails on them"),
    (lambda h: [h["layer/1"].__delitem__(key) for key in list(h["layer/1"])],
     "layer 1: is an empty group"),
    (lambda h: _replace(h, "layer/0/bias", h["layer/0/bias"][()].reshape(-1, 1)),
     "layer 0: field 'bias': bias of shape (12, 1): netx hands a dense layer's bias to Lava as it is"),
])
def test_dense_files_netx_cannot_run_are_refused_in_one_line(tmp_path, edit, expected):
    """netx builds the float-threshold and the (N, 1) bias files and Lava then fails (the verifier waited
    for it until its timeout); the float shape and the empty group fail in netx itself."""
    path = _slayer_style_dense(tmp_path / "bad.h5", edit)
    with pytest.raises(hw_sim.LoihiFileError) as error:
        hw_sim.load(path)
    assert expected in str(error.value) and "\n" not in str(error.value), str(error.value)


@pytest.mark.parametrize("field, value, expected", [
    ("groups", np.array([1]), "field 'groups' is a 1-d array of shape (1,); netx 0.6 fails on it (store a scalar)"),
    ("stride", np.array([1]), "field 'stride' is a 1-d array of shape (1,); netx 0.6 fails on it"),
])
def test_conv_geometry_netx_cannot_build_is_refused(tmp_path, field, value, expected):
    path = tmp_path / "conv.h5"
    write_slayer_style_file(path, 2, input_shape=(2, 8, 6), conv_channels=(3,))
    with h5py.File(path, "a") as handle:
        _replace(handle, f"layer/0/{field}", value)
    with pytest.raises(hw_sim.LoihiFileError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        hw_sim.load(path, input_shape=(2, 8, 6))


def test_conv_geometry_as_scalars_runs_as_netx_runs_it(tmp_path):
    path = tmp_path / "conv.h5"
    write_slayer_style_file(path, 2, input_shape=(2, 8, 6), conv_channels=(3,))
    with h5py.File(path, "a") as handle:
        geometry = {name: handle[f"layer/0/{name}"][()] for name in ("stride", "padding", "dilation")}
        assert all(np.all(v == v.reshape(-1)[0]) for v in geometry.values())
        for name, v in geometry.items():
            _replace(handle, f"layer/0/{name}", np.int64(v.reshape(-1)[0]))
    network = hw_sim.load(path, input_shape=(2, 8, 6))
    x = spikes_in(network, steps=15, batch=2, density=0.3)
    assert_bit_exact(hw_sim.verify(network, x, builder="netx", netx_file=path))
