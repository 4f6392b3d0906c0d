"""Datasets for SBNN training: benchmark files read from disk, built-in offline data, encoders.

Nothing here downloads. Benchmarks (SHD, DVS Gesture, CIFAR-10) are read from the original files in a
folder the user names; digits and Randman need no files; users bring their own data as an `.npz`, a
folder of `.npy` files or a CSV table (docs/data.md#your-data).

Array conventions (all numpy):

- Static features: ``x`` of shape ``(N, *feature_shape)``, float32 (digits ``(N, 64)`` in [0, 1],
  CIFAR-10 ``(N, 3, 32, 32)`` in [0, 1]).
- Spike trains: ``x`` of shape ``(N, T, *input_shape)``, time second. Binary spikes are uint8 0/1;
  spike counts (``binary=False``) and analog ("direct") inputs are float32.
- Labels: ``y`` of shape ``(N,)``, int64 class indices in ``[0, num_classes)``.

Entry point: :func:`load_dataset`. Every problem with a file raises :class:`DataError`, whose one-line
message names the file and what was expected.

Each data set is one :class:`DatasetLoader` in one registry (:func:`register_dataset`): its loader
function, its options, whether it reads a path, whether it is always spike trains. ``load_dataset`` and the
run configs' ``[data]`` checks read the registry, so adding a data set is one module plus one
registration line (docs/extending.md#dataset).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from sbnn.registry import Registry


class DataError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the expected format."""

    def __init__(self, message: str) -> None:
        # Library errors quoted inside a message may span lines; keep the message to one line.
        super().__init__(" ".join(str(message).splitlines()))


@dataclass
class Dataset:
    """A train/test split held in memory.

    Attributes:
        name: dataset name as given to :func:`load_dataset`.
        x_train, x_test: inputs, ``(N, *input_shape)`` for static features or ``(N, steps, *input_shape)``
            for spike trains (see the module docstring for dtypes).
        y_train, y_test: int64 labels ``(N,)``.
        num_classes: number of classes; labels lie in ``[0, num_classes)``.
        input_shape: shape of one sample at one time step (features: one sample), e.g. ``(700,)`` for SHD,
            ``(2, 128, 128)`` for DVS Gesture, ``(64,)`` for digits.
        steps: number of time steps ``T`` for spike-train inputs; None for static features.
        classes: for data whose labels were text, the label of each class in class order (sorted);
            None when the labels are the class indices themselves (docs/data.md#labels).
        preprocessing: how raw features became these inputs (standardisation, encoding;
            :class:`sbnn.data.preprocessing.Preprocessing`); None for data sets that are spike trains on disk.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    steps: int | None = None
    classes: tuple[str, ...] | None = None
    preprocessing: Any = None

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if len(x) != len(y):
                raise ValueError(f"{self.name}: x_{split} has {len(x)} samples but y_{split} has {len(y)}")
            leading = 1 if self.steps is None else 2
            if tuple(x.shape[leading:]) != tuple(self.input_shape):
                raise ValueError(
                    f"{self.name}: x_{split} has shape {x.shape}, inconsistent with input_shape "
                    f"{self.input_shape} and steps {self.steps}"
                )

    @classmethod
    def from_splits(
        cls,
        name: str,
        splits: dict[str, tuple[np.ndarray, np.ndarray]],
        *,
        num_classes: int,
        input_shape: tuple[int, ...],
        steps: int | None = None,
    ) -> Dataset:
        """A Dataset from ``{"train": (x, y), "test": (x, y)}``, the arrays as the attributes describe them."""
        return cls(
            name=name,
            x_train=splits["train"][0],
            y_train=splits["train"][1],
            x_test=splits["test"][0],
            y_test=splits["test"][1],
            num_classes=num_classes,
            input_shape=input_shape,
            steps=steps,
        )

    @property
    def is_spiking(self) -> bool:
        """True when the inputs are time series ``(N, T, ...)`` rather than static features."""
        return self.steps is not None


@dataclass(frozen=True)
class DatasetLoader:
    """How :func:`load_dataset` loads one data set (registered with :func:`register_dataset`).

    ``load`` is called as ``load([path], [steps=...], [seed=...], **options)``: the path (positional) when
    ``needs_path``, ``steps`` when ``spike_steps`` is set, ``seed`` when ``seeded``, and the user's
    options, each one of ``options``.  It returns a :class:`Dataset`.

    Attributes:
        name: the ``data.name`` of run configs and the name given to :func:`load_dataset`.
        load: the loader function.
        options: the keyword options it accepts (extra ``[data]`` keys), besides path/steps/encoding/seed.
        needs_path: it reads files from a folder or file the user names (``data.path``); else it is built
            in and refuses a path.
        path_help: what the path is, for the message when it is missing.
        spike_steps: set for loaders that always return spike trains: the number of time steps when
            none is asked for (``steps`` is then passed on and encodings are refused).  ``None``: static
            features, or a file that decides; ``load_dataset`` then encodes features on request and
            checks the steps of spike trains.
        seeded: it takes ``seed`` (random splits or generation).
        path_options: those of ``options`` whose values are file or folder paths; a run config resolves
            them like ``path`` (relative to the config file's folder, docs/data.md#paths).
    """

    name: str
    load: Callable[..., Dataset]
    options: tuple[str, ...] = ()
    needs_path: bool = False
    path_help: str = "the folder holding its original files"
    spike_steps: int | None = None
    seeded: bool = False
    path_options: tuple[str, ...] = ()


_REGISTRY: Registry[DatasetLoader] = Registry("data set", unknown="unknown dataset {name}; choose one of {names}")


def register_dataset(loader: DatasetLoader, *, replace: bool = False) -> DatasetLoader:
    """Make a data set known to :func:`load_dataset` and the run configs by ``loader.name``; returns it.
    A name already taken is refused unless ``replace``."""
    if not isinstance(loader, DatasetLoader):
        raise TypeError(f"register a DatasetLoader, got {loader!r}")
    return _REGISTRY.register(loader.name, loader, replace=replace)


def unregister_dataset(name: str) -> None:
    """Forget a registered data set (the built-in ones stay)."""
    _REGISTRY.unregister(name)


def dataset_names() -> tuple[str, ...]:
    """The registered data sets' names, the built-in ones (:data:`DATASETS`) first."""
    return _REGISTRY.names()


def dataset_loader(name: str) -> DatasetLoader:
    """The registered :class:`DatasetLoader` called ``name``."""
    return _REGISTRY.get(name)


# The submodules import DataError and Dataset from this package, so they must be defined first.
from sbnn.data._validation import require_positive_int  # noqa: E402
from sbnn.data.builtin import load_digits, make_randman  # noqa: E402
from sbnn.data.cifar10 import load_cifar10  # noqa: E402
from sbnn.data.dvs_gesture import (  # noqa: E402
    load_dvs_gesture,
    read_aedat_polarity_events,
    read_gesture_labels,
)
from sbnn.data.encoders import (  # noqa: E402
    ENCODINGS,
    direct_encode,
    encode,
    latency_encode,
    on_off_encode,
    rate_encode,
)
from sbnn.data.mnist import load_mnist  # noqa: E402
from sbnn.data.csv_file import load_csv  # noqa: E402
from sbnn.data.npy_folder import load_npy_folder  # noqa: E402
from sbnn.data.npz import load_npz  # noqa: E402
from sbnn.data.safe_pickle import restricted_pickle_load  # noqa: E402
from sbnn.data.shd import load_shd  # noqa: E402

DEFAULT_ENCODING_STEPS = 25

# The built-in data sets, one line each.
register_dataset(DatasetLoader("digits", load_digits, options=("test_fraction",), seeded=True))
register_dataset(DatasetLoader("randman", make_randman, options=(
    "num_classes", "num_units", "intrinsic_dim", "samples_per_class", "spikes_per_unit", "alpha", "test_fraction",
), spike_steps=100, seeded=True))
register_dataset(DatasetLoader("shd", load_shd, options=("max_time", "binary"), needs_path=True, spike_steps=100))
register_dataset(DatasetLoader("dvs_gesture", load_dvs_gesture, options=("downsample", "duration_us", "binary"),
                               needs_path=True, spike_steps=20))
register_dataset(DatasetLoader("cifar10", load_cifar10, needs_path=True))
register_dataset(DatasetLoader("npz", load_npz, options=("num_classes",), needs_path=True, path_help="the .npz file"))
register_dataset(DatasetLoader("npy", load_npy_folder, options=("num_classes",), needs_path=True,
                               path_help="the folder holding x_train.npy, y_train.npy, x_test.npy, y_test.npy"))
register_dataset(DatasetLoader("csv", load_csv, options=("label_column", "test_fraction", "delimiter"),
                               needs_path=True, seeded=True,
                               path_help="a .csv file, or a folder holding train.csv and test.csv"))
register_dataset(DatasetLoader("mnist", load_mnist, options=("validation", "file"), path_options=("file",)))

# The built-in data sets (dataset_names() lists the registered ones, these and any added since).
DATASETS: tuple[str, ...] = dataset_names()
_REGISTRY.seal_built_ins()


def load_dataset(
    name: str,
    *,
    path: str | os.PathLike[str] | None = None,
    steps: int | None = None,
    encoding: str | None = None,
    seed: int = 0,
    standardise: str | bool = "auto",
    **options: Any,
) -> Dataset:
    """Load a dataset by name.

    Args:
        name: one of ``digits``, ``randman``, ``shd``, ``dvs_gesture``, ``cifar10``, ``npz``, ``npy``,
            ``csv``, ``mnist``, or a name registered since (:func:`register_dataset`).
        path: folder with the original files (``shd``: ``shd_train.h5``/``shd_test.h5``;
            ``dvs_gesture``: IBM's ``DvsGesture`` folder; ``cifar10``: the folder holding
            ``cifar-10-batches-py`` or that folder itself), the ``.npz`` file, the folder of ``.npy``
            files, or the ``.csv`` file (or folder of ``train.csv`` and ``test.csv``); None for built-in data.
        steps: time steps T. Spiking datasets: number of time bins (defaults: randman 100, shd 100,
            dvs_gesture 20). Feature datasets: length of the encoded spike train (default 25); only
            valid together with ``encoding``.
        encoding: for feature datasets (digits, cifar10, npz with 2-D x): None or ``"none"`` keeps the
            features; ``rate``, ``on_off``, ``latency`` or ``direct`` turns them into ``(N, T, ...)``
            inputs (see :mod:`sbnn.data.encoders`). Must be None for spiking datasets.
        seed: seeds every random choice (digits split, Randman generation, rate encoders).
        standardise: ``"auto"``, ``True`` or ``False``: static features (:func:`standardise_dataset`).
        **options: loader-specific options: digits ``test_fraction``; randman ``num_classes``,
            ``num_units``, ``intrinsic_dim``, ``samples_per_class``, ``spikes_per_unit``, ``alpha``,
            ``test_fraction``; shd ``max_time`` (s), ``binary``; dvs_gesture ``downsample``,
            ``duration_us``, ``binary``; npz and npy ``num_classes``; csv ``label_column``,
            ``test_fraction``, ``delimiter``; mnist ``validation``, ``file``.

    Returns:
        The :class:`Dataset`.

    Raises:
        DataError: a file is missing or malformed.
        ValueError: an unknown name, option or an invalid combination of arguments.
    """
    loader = dataset_loader(name)
    encoding = _checked_load_arguments(loader, path, steps, encoding, options)
    try:
        return _load(loader, path, steps, encoding, seed, options, standardise)
    except MemoryError as error:
        # sizes from a config or a file that do not fit: a one-line error, not a traceback
        raise DataError(f"{name}: the data set does not fit in memory ({' '.join(str(error).split())})") from None


def _checked_load_arguments(loader: DatasetLoader, path: Any, steps: int | None, encoding: str | None,
                            options: dict[str, Any]) -> str | None:
    """Refuse unknown options, encodings, a bad ``steps`` and a path given or missing against the loader;
    returns the encoding with ``"none"`` read as None."""
    name = loader.name
    unknown = sorted(set(options) - set(loader.options))
    if unknown:
        allowed = ", ".join(loader.options) or "none"
        raise ValueError(f"unknown option(s) for dataset {name!r}: {', '.join(unknown)} (allowed: {allowed})")
    if encoding == "none":
        encoding = None
    if encoding is not None and encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; choose one of none, {', '.join(ENCODINGS)}")
    if steps is not None:
        require_positive_int("steps", steps)
    if loader.needs_path and path is None:
        raise ValueError(f"dataset {name!r} needs path= (the folder or file holding its original files)")
    if not loader.needs_path and path is not None:
        raise ValueError(f"dataset {name!r} is built in and takes no path (got {os.fspath(path)!r})")
    return encoding


def _load(loader: DatasetLoader, path: Any, steps: int | None, encoding: str | None, seed: int,
          options: dict[str, Any], standardise: str | bool = "auto") -> Dataset:
    name = loader.name
    arguments = (path,) if loader.needs_path else ()
    keywords: dict[str, Any] = {"seed": seed} if loader.seeded else {}
    if loader.spike_steps is not None:
        _reject_encoding(name, encoding)
        dataset = loader.load(*arguments, steps=loader.spike_steps if steps is None else steps, **keywords, **options)
    else:
        dataset = loader.load(*arguments, **keywords, **options)
        if dataset.is_spiking:
            _reject_encoding(name, encoding)
            if steps is not None and steps != dataset.steps:
                raise ValueError(f"{name}: the file holds spike trains of {dataset.steps} steps, not {steps}")
        elif steps is not None and encoding is None:
            raise ValueError(f"{name}: steps={steps} needs an encoding ({', '.join(ENCODINGS)}) for static features")
        else:
            dataset = standardise_dataset(dataset, standardise, encoding)
            if encoding is not None:
                dataset = encode_dataset(dataset, encoding, DEFAULT_ENCODING_STEPS if steps is None else steps,
                                         seed=seed)
    return dataset


def standardise_dataset(dataset: Dataset, mode: str | bool, encoding: str | None = None) -> Dataset:
    """Static features standardised on the training split into ``encoding``'s range when ``mode`` asks for it
    (:func:`sbnn.data.preprocessing.should_standardise`); ``dataset.preprocessing`` records what was done."""
    from sbnn.data.preprocessing import (Preprocessing, Standardisation, encoder_range, feature_spread,
                                         should_standardise)

    scaling = None
    raw_range = (float(dataset.x_train.min()), float(dataset.x_train.max())) if len(dataset.x_train) else None
    spread = feature_spread(dataset.x_train)
    if should_standardise(mode, dataset.x_train, encoding):
        low, high = encoder_range(encoding)
        scaling = Standardisation.fit(dataset.x_train, low=low, high=high)
        dataset = replace(dataset, x_train=scaling.apply(dataset.x_train), x_test=scaling.apply(dataset.x_test))
    return replace(dataset, preprocessing=Preprocessing(feature_shape=tuple(dataset.input_shape),
                                                        standardisation=scaling, raw_range=raw_range,
                                                        raw_spread=spread))


def encode_dataset(dataset: Dataset, encoding: str, steps: int, *, seed: int = 0) -> Dataset:
    """Turn a static-feature dataset into spike trains ``(N, steps, ...)`` with one of :data:`ENCODINGS`.

    The rate codes draw sample ``i`` of the train split from the stream ``(seed, TRAIN_STREAM, i)`` and sample
    ``i`` of the test split from ``(seed, TEST_STREAM, i)`` (:mod:`sbnn.data.encoders`), as ``sbnn simulate
    --inputs raw.npy`` does for the file's sample ``i``.
    """
    from sbnn.data.encoders import TEST_STREAM, TRAIN_STREAM

    if dataset.is_spiking:
        raise ValueError(f"{dataset.name}: already spike trains; encoders apply to static features")
    x_train = encode(dataset.x_train, encoding, steps, seed=(seed, TRAIN_STREAM))
    x_test = encode(dataset.x_test, encoding, steps, seed=(seed, TEST_STREAM))
    from sbnn.data.preprocessing import Preprocessing

    preprocessing = replace(dataset.preprocessing or Preprocessing(feature_shape=tuple(dataset.input_shape)),
                            encoding=encoding, steps=steps, seed=seed)
    return Dataset(
        name=dataset.name,
        x_train=x_train,
        y_train=dataset.y_train,
        x_test=x_test,
        y_test=dataset.y_test,
        num_classes=dataset.num_classes,
        input_shape=tuple(x_train.shape[2:]),
        steps=steps,
        classes=dataset.classes,
        preprocessing=preprocessing,
    )


def _reject_encoding(name: str, encoding: str | None) -> None:
    if encoding is not None:
        raise ValueError(f"dataset {name!r} is already spike trains; encoding={encoding!r} applies only to features")


__all__ = [
    "DATASETS",
    "ENCODINGS",
    "DataError",
    "Dataset",
    "DatasetLoader",
    "dataset_loader",
    "dataset_names",
    "register_dataset",
    "unregister_dataset",
    "direct_encode",
    "encode",
    "encode_dataset",
    "standardise_dataset",
    "latency_encode",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_dvs_gesture",
    "load_csv",
    "load_npy_folder",
    "load_npz",
    "load_shd",
    "make_randman",
    "on_off_encode",
    "rate_encode",
    "read_aedat_polarity_events",
    "read_gesture_labels",
    "restricted_pickle_load",
]
