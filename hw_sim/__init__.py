"""hw_sim: integer Loihi networks, a bit-exact batched simulator, and the same network run in Lava.

>>> import hw_sim
>>> net = hw_sim.load("run/export/loihi.h5")     # -> hw_sim.Network
>>> out = net.run(x)                             # x: (batch, T, *input_shape) integer spikes
>>> out.spikes[k], out.u[k], out.v[k]            # per layer (batch, T, *shape)
>>> hw_sim.lava.run(net, x)                      # same result type, computed by Lava (.venv-lava)
>>> hw_sim.verify(net, x)                        # spike-for-spike comparison of the two
>>> hw_sim.run(net, x, device="cuda")            # the same result, bit for bit, from the torch backend
                                                 # ("cpu", "cuda:1", a torch.device; None: numpy)

This package imports neither ``sbnn`` nor ``export``; its description and file modules need only numpy and
h5py, so the Lava worker (numpy < 2) can use them too. torch is imported only by conv layers, sparse
products and the torch backend (docs/loihi.md#torch-backend), on first use.
"""

from .arith import SignMode
from .network import ConvLayer, CubaNeurons, DenseLayer, Network, NetworkError, RunResult
from .netx_io import LoihiFileError, LoihiFileWarning, equivalent, load, netx_exact, save
from .verification import VerifyReport, compare, verify

__all__ = ["SignMode", "ConvLayer", "CubaNeurons", "DenseLayer", "Network", "NetworkError", "RunResult",
           "LoihiFileError", "LoihiFileWarning", "equivalent", "load", "netx_exact", "save", "lava", "verify", "compare", "VerifyReport", "random_network", "run"]


def __getattr__(name: str):
    # Submodules that need more than numpy/h5py are imported on first use.
    if name == "lava":
        import importlib
        return importlib.import_module(f"{__name__}.lava")
    if name == "run":
        from .loihi import run
        return run
    if name == "random_network":
        from .random_networks import random_network
        return random_network
    raise AttributeError(name)
