"""Tiny run configurations shared by tests: a Randman SNN that trains in a second or two."""

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
