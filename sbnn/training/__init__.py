"""Training from a run configuration: ``sbnn train CONFIG.toml [--out RUN] [--set key=value ...] [--resume]``.

The loss of method ``sbnn`` is the negative ELBO of docs/method.md#loss plus the auxiliary penalty::

    loss = NLL(batch) + beta_t * KL(q || p) / N_train + aux

with ``beta_t`` ramping linearly from 0 to ``train.kl_weight`` over ``train.kl_warmup_epochs`` (per step).
The network runs in mode ``"noisy"`` (fresh neuron and local-reparameterisation noise per example and step).
Method ``surrogate`` trains the same architecture with deterministic neurons and the fast-sigmoid
surrogate gradient; its KL is 0.

A run folder holds ``config.toml`` (the resolved config), ``checkpoint.pt`` and ``metrics.json``, all
written atomically (:mod:`safeio.atomic`: hidden temporary file, then ``os.replace``) after every epoch, by
rank 0 only; the temporaries a killed run left are removed when a run starts writing into its folder.
It also holds ``.sbnn-run``, the marker that lets ``--out`` name it again (:func:`check_run_folder` refuses any
other non-empty folder, so training never writes over a user's ``config.toml``), and ``.sbnn.lock``:
``sbnn train`` holds that folder's writer lock (:func:`safeio.atomic.folder_lock`) while it trains.
``checkpoint.pt`` holds only tensors, dicts, lists, numbers and strings, so it loads with
``torch.load(path, weights_only=True)``: the model, optimiser and scheduler states, the RNG states (torch,
CUDA, numpy, python, the data-order generator), the epoch, the global step, the metrics history and the
config.  ``--resume`` continues from it and reaches exactly the weights of an uninterrupted run:

* the data order comes from one generator whose state is checkpointed;
* the neuron noise of epoch ``e`` on rank ``r`` comes from a generator seeded with ``(seed, e, r)``, so
  no process's noise state has to be gathered to resume at an epoch boundary;
* evaluation draws from its own generators seeded with ``train.eval_seed`` and works on a copy of the
  model, so it never touches the training state.

Bit-exact equality needs the same config (``train.epochs``, ``device``, ``threads`` and
``eval_batch_size`` may change on resume; a longer run follows the schedule of its new length), the
same number of processes and the same hardware and thread count.

Multi-process data parallelism: started by ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in the
environment) the processes join a ``torch.distributed`` group (gloo on CPU, NCCL on CUDA), wrap the model
in ``DistributedDataParallel`` and each take a deterministic shard of every epoch's permutation
(``DistributedSampler``'s layout: padded to a multiple of the world size, rank ``r`` takes every
``world``-th example from ``r``); ``train.batch_size`` is the global batch.  Rank 0 evaluates and writes
files while the others wait.

The modules:

* :mod:`~sbnn.training.run_folder`: the run folder's files and marker, :func:`check_run_folder`,
  :func:`default_run_dir`, atomic and JSON writing, the summary;
* :mod:`~sbnn.training.checkpoint`: writing, loading and checking ``checkpoint.pt``, the resume policy,
  :func:`load_trained_model`;
* :mod:`~sbnn.training.distributed`: :class:`ProcessGroup`, the device, the collectives, :func:`epoch_shard`;
* :mod:`~sbnn.training.rng`: seeding, the noise seeds, the RNG states a checkpoint holds;
* :mod:`~sbnn.training.data`: :class:`TrainingData` (the data set and its subsets) and the model for it;
* :mod:`~sbnn.training.schedule`: the optimiser, :func:`learning_rate_factor`, :func:`kl_weight_at`;
* :mod:`~sbnn.training.loop`: :func:`train` (set-up, the epochs, evaluation and checkpoints) and
  :class:`EpochTotals`;
* :mod:`~sbnn.training.errors`: :class:`RunFolderError` and :class:`TrainingError`.

``python -m sbnn.train CONFIG.toml`` (what ``torchrun -m sbnn.train`` starts) runs ``sbnn train``.
"""

from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, load_trained_model
from .data import TrainingData, build_run_model, load_training_data
from .distributed import ProcessGroup, epoch_shard
from .errors import RunFolderError, TrainingError
from .loop import EpochTotals, train
from .run_folder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    JSON_KEYS,
    METRICS_FILE,
    RUN_FILES,
    RUN_MARKER,
    check_run_folder,
    default_run_dir,
    json_safe,
    remove_stale_temporaries,
)
from .schedule import kl_weight_at, learning_rate_factor

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "CONFIG_FILE",
    "EpochTotals",
    "JSON_KEYS",
    "METRICS_FILE",
    "ProcessGroup",
    "RUN_FILES",
    "RUN_MARKER",
    "RunFolderError",
    "TrainingData",
    "TrainingError",
    "build_run_model",
    "check_run_folder",
    "default_run_dir",
    "epoch_shard",
    "json_safe",
    "kl_weight_at",
    "learning_rate_factor",
    "load_checkpoint",
    "load_trained_model",
    "load_training_data",
    "remove_stale_temporaries",
    "train",
]
