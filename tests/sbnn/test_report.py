"""report.html renders in headless Chromium without errors, and every image loads."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from hw_sim.energy import energy_report
from hw_sim.random_networks import random_input, random_network
from sbnn.report import render, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def example_result() -> dict:
    """A result with every section, its numbers computed by the real energy code on a real network."""
    network = random_network(2, hidden=(16,), readout=True)
    x = random_input(2, network, 4, 12)
    energy = energy_report(network, x)
    spikes = network.run(x).spikes
    rng = np.random.default_rng(0)
    history = [{"epoch": e, "loss": {"nll": 2.0 / e, "kl_term": 0.5 / e, "aux": 0.01},
                "test": {kind: {"accuracy": 0.5 + 0.1 * e} for kind in ("mean", "noisy", "ensemble")},
                "train": {"mean": {"accuracy": 0.55 + 0.1 * e}}} for e in (1, 2, 3)]
    return {"name": "example", "run_dir": "runs/example",
            "training": {"history": history},
            "accuracy": {"float_mean": 0.8, "float_noisy": 0.79, "float_ensemble": 0.81, "quantised_float": 0.8,
                         "hw_mean": 0.79, "hw_ensemble": 0.8, "lava_subset": 0.75, "hw_subset": 0.75,
                         "lava_subset_size": 8},
            "verify": {"bit_exact": True, "spikes_compared": 1000, "states_compared": 2000, "samples": 8},
            "exports": [{"name": "mean", "accuracy_hw": 0.79, "energy_uj": energy["energy_uj"], "synops": 10.0,
                         "netx_exact": True},
                        {"name": "sample0", "accuracy_hw": 0.77, "energy_uj": {**energy["energy_uj"], "loihi": 0.9},
                         "synops": 9.0, "netx_exact": True}],
            "energy": {"mean": energy},
            "raster": {"sample": 0, "layers": [s[0].reshape(12, -1).tolist() for s in spikes]},
            "firing_rates": [float(s.mean()) for s in spikes],
            "calibration": {"bin_centers": list(np.linspace(0.05, 0.95, 10)), "bin_accuracy": list(rng.random(10)),
                            "bin_counts": list(rng.integers(0, 10, 10)), "ece": 0.05},
            "entropy": {"correct": list(rng.random(30) * 0.5), "wrong": list(rng.random(10) + 0.5)},
            "timings": {"train": 1.0, "export": 0.5}}


def test_render_has_every_section():
    page = render(example_result())
    for heading in ("Accuracy", "Exported networks", "Energy", "Accuracy against energy", "Training", "Spike raster",
                    "Firing rates", "Calibration", "Uncertainty of the hardware ensemble"):
        assert f">{heading}" in page
    assert page.count("data:image/png;base64,") == 7 and "bit-exact" in page


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make setup installs it as root)")
def test_report_renders_in_headless_chromium_and_every_image_loads(tmp_path):
    path = write_report(example_result(), tmp_path / "report.html")
    profile = tmp_path / "profile"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
         "--dump-dom", path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    total = re.search(r'data-images-total="(\d+)"', done.stdout)
    loaded = re.search(r'data-images-loaded="(\d+)"', done.stdout)
    assert total and loaded, "the page's load handler did not run"
    assert int(total.group(1)) == 7 and loaded.group(1) == total.group(1)
    console_errors = [line for line in done.stderr.splitlines() if "CONSOLE" in line and "rror" in line]
    assert not console_errors and "Uncaught" not in done.stderr
