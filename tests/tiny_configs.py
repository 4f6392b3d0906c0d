"""Tiny run configurations shared by tests: Randman spiking nets that train in a second or two."""

# [data], [model] and [train] of a 3-class, 12-channel, 8-step Randman spiking net, one epoch.
TINY_RANDMAN_RUN = """
[data]
name = "randman"
num_classes = 3
num_units = 12
steps = 8
samples_per_class = 20
intrinsic_dim = 1

[model]
kind = "snn"
hidden = [10]

[train]
epochs = 1
batch_size = 16
eval_samples = 1
threads = 1
"""

# The same run, exported and verified with as little as possible: one posterior sample, one Lava sample.
TINY_EXPORTABLE_RUN = TINY_RANDMAN_RUN + """
[export]
posterior_samples = 1
calibration_samples = 8

[pipeline]
lava_samples = 1
"""

# A 16-unit spiking net on a spike data set stored next to the config (``../data/spikes.npz``), two
# epochs with a fixed seed: the whole pipeline, reproducible run for run.
TINY_NPZ_PIPELINE = """
[data]
name = "npz"
path = "../data/spikes.npz"

[model]
kind = "snn"
hidden = [16]
init_gain = 3.0

[train]
epochs = 2
batch_size = 16
lr = 0.02
kl_weight = 0.01
eval_samples = 2
threads = 1
seed = 0

[export]
posterior_samples = 1
calibration_samples = 16

[pipeline]
lava_samples = 1
"""
