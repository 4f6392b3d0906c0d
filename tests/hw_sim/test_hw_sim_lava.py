"""hw_sim against real Lava (lava-nc 0.10.0 fixed_pt models, and Intel's netx), spike for spike, u and v.

Each case runs a real Lava network in .venv-lava through hw_sim.lava; nothing is mocked.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import hw_sim
from hw_sim.lava import LavaError, choose_mode
from hw_sim.random_networks import random_input, random_network

pytestmark = pytest.mark.lava

# Seeded random networks over Lava's parameter space: all sign modes, weight bits 1-9, weight exponents
# -7..7, du -1..4095, dv 0..4096, thresholds 0..2^17-1, biases with exponents, conv with stride and
# padding, recurrence, graded input; "stress" cases make u wrap and v saturate.
CASES = {
    "dense_bias": (11, dict(hidden=(40,))),
    "dense_no_bias_concat": (12, dict(hidden=(40, 24), bias=False)),
    "stress_a": (19, dict(stress=True)),
    "stress_b": (14, dict(stress=True, hidden=(30, 20))),
    "recurrent_readout": (15, dict(recurrent=True, readout=True)),
    "conv_stride_padding": (16, dict(input_shape=(2, 9, 7), conv_channels=(3, 4), hidden=(12,))),
    "conv_stress": (17, dict(input_shape=(2, 8, 8), conv_channels=(3,), hidden=(), stress=True)),
    "graded_input": (18, dict(input_message_bits=8)),
    "graded_conv": (19, dict(input_shape=(1, 6, 6), conv_channels=(2,), hidden=(10,), input_message_bits=6)),
}


def assert_identical(expected, actual):
    report = hw_sim.compare(expected, actual)
    assert report.bit_exact, report.summary()
    return report


@pytest.mark.parametrize("case", CASES)
def test_hw_sim_equals_lava_on_every_spike_u_and_v(case):
    seed, options = CASES[case]
    network = random_network(seed, **options)
    x = random_input(seed, network, 3, 16)
    ours = network.run(x, record_states=True)
    assert sum(int(s.sum()) for s in ours.spikes) > 0, "a silent network would prove nothing"
    report = assert_identical(ours, hw_sim.lava.run(network, x, record_states=True))
    assert report.states_compared == report.spikes_compared * 2


def test_random_parameter_sweep_is_active_and_exact():
    """Several more stress networks in one Lava call per network, spikes only, with two workers."""
    wrapped = saturated = 0
    for seed in range(20, 24):
        network = random_network(seed, stress=seed % 2 == 0, recurrent=seed % 3 == 0, hidden=(24,))
        x = random_input(seed, network, 4, 20)
        ours = network.run(x, record_states=True)
        wrapped += sum(int((np.abs(u) > (1 << 22)).sum()) for u in ours.u)
        saturated += sum(int((np.abs(v) == (1 << 23) - 1).sum()) for v in ours.v)
        assert_identical(ours, hw_sim.lava.run(network, x, record_states=True, workers=2))
    assert wrapped and saturated, "the sweep must reach wrapping currents and saturated voltages"


def test_concatenated_samples_equal_fresh_runs():
    """Lava's batching by concatenation with staggered LIFReset (docs/loihi.md#batching) is exact without bias."""
    network = random_network(35, hidden=(32, 16), bias=False)
    assert choose_mode(network) == "concat"
    x = random_input(35, network, 6, 15, density=0.4)
    ours = network.run(x, record_states=True)
    assert all(int(s.sum()) > 0 for s in ours.spikes)
    assert_identical(ours, hw_sim.lava.run(network, x, record_states=True, mode="concat"))


def test_intel_netx_loads_our_file_and_matches_hw_sim(tmp_path):
    """Our loihi.h5, loaded by Intel's netx.hdf5.Network and run in Lava, gives exactly hw_sim's result."""
    network = random_network(8, input_shape=(2, 9, 7), conv_channels=(3,), hidden=(12,), netx_compatible=True,
                             readout=True)
    assert hw_sim.netx_exact(network)
    loaded = hw_sim.load(hw_sim.save(network, tmp_path / "loihi.h5"))
    x = random_input(8, loaded, 3, 15)
    ours = loaded.run(x, record_states=True)
    assert int(ours.spikes[0].sum()) > 0 and np.abs(ours.v[-1]).max() > 0
    assert_identical(ours, hw_sim.lava.run(loaded, x, record_states=True, builder="netx"))


def test_intel_netx_concatenated_reset_scheme(tmp_path):
    network = random_network(11, hidden=(24,), netx_compatible=True, bias=False)
    network = hw_sim.load(hw_sim.save(network, tmp_path / "loihi.h5"))
    x = random_input(11, network, 4, 12, density=0.5)
    ours = network.run(x, record_states=True)
    assert all(int(s.sum()) > 0 for s in ours.spikes)
    assert_identical(ours, hw_sim.lava.run(network, x, record_states=True, builder="netx", mode="concat"))


def test_netx_builder_refuses_networks_netx_cannot_express():
    network = random_network(1, stress=True)
    with pytest.raises(ValueError, match="netx cannot express"):
        hw_sim.lava.run(network, random_input(1, network, 1, 4), builder="netx")


def _workers_alive(marker: str) -> list[str]:
    """PIDs of Lava workers (and their forked children) whose job folder lies under ``marker``."""
    out = subprocess.run(["pgrep", "-f", f"hw_sim.lava_worker {marker}"], capture_output=True, text=True).stdout
    return out.split()


def test_hanging_worker_is_stopped_with_its_children(monkeypatch, tmp_path):
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # job folders, and so worker command lines, under tmp_path
    network = random_network(12, hidden=(40, 24), bias=False)
    x = random_input(0, network, 50, 100)
    start = time.monotonic()
    with pytest.raises(LavaError, match="did not finish within 1 s"):
        hw_sim.lava.run(network, x, timeout=1)
    assert time.monotonic() - start < 30
    time.sleep(0.5)
    assert _workers_alive(str(tmp_path)) == []


def test_crashing_worker_gives_a_clear_error(monkeypatch, tmp_path):
    crash = tmp_path / "python"
    crash.write_text(f"#!{sys.executable}\nimport sys\nprint('MemoryError: simulated out of memory', file=sys.stderr)\nsys.exit(1)\n")
    crash.chmod(0o755)
    monkeypatch.setenv("SBNN_LAVA_PYTHON", str(crash))
    network = random_network(2)
    with pytest.raises(LavaError, match="the Lava worker failed: MemoryError: simulated out of memory"):
        hw_sim.lava.run(network, random_input(0, network, 1, 5))
    monkeypatch.setenv("SBNN_LAVA_PYTHON", str(tmp_path / "absent"))
    with pytest.raises(LavaError, match="run `make setup`"):
        hw_sim.lava.run(network, random_input(0, network, 1, 5))


def test_netx_weight_optimiser_matches_intel_netx():
    """Our re-implementation of netx's optimize_weight_bits against the real one, in .venv-lava."""
    script = """
import sys, numpy as np
sys.path.insert(0, '.')
from hw_sim import lava_compat; lava_compat.install()
from unittest import mock
for name in ('cv2', 'torchvision', 'torchvision.ops', 'torchvision.transforms', 'torchvision.io',
             'torchvision.utils', 'torchvision.transforms.functional', 'torchvision.datasets'):
    sys.modules.setdefault(name, mock.MagicMock())
from lava.lib.dl.netx.utils import optimize_weight_bits
from hw_sim.arith import netx_optimize_weight_bits
rng = np.random.default_rng(0)
checked = 0
for low, high in [(-127, 128), (0, 100), (-90, 1), (-128, 1), (-64, 64), (1, 255), (-40, 254)]:
    for _ in range(20):
        w = rng.integers(low, high, size=(6, 9)) * int(rng.choice([1, 2, 4]))
        w = np.clip(w, -256, 254)
        if not w.any():
            continue
        theirs = optimize_weight_bits(w)
        try:
            ours = netx_optimize_weight_bits(w)
        except ValueError:
            assert not np.asarray(theirs[0]).any(), (w, theirs)
            continue
        assert np.array_equal(ours[0], theirs[0]) and ours[1:] == (theirs[1], theirs[2]), (w, ours, theirs)
        checked += 1
print(checked)
"""
    from hw_sim.lava import PROJECT_ROOT, lava_python
    done = subprocess.run([str(lava_python()), "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 100
