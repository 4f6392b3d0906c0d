"""A restricted unpickler for data files: numpy arrays and plain containers only, no code.

``pickle.load`` calls whatever callable a pickle names (``os.system``, ``builtins.exec``, ...), so a
crafted data file can run code. :func:`restricted_pickle_load` resolves only the few globals numpy needs
to rebuild an ndarray and its dtype; any other global is refused before it is looked up. Containers
(dict, list, tuple, set), str, bytes, bytearray, int, float, bool and None are pickle opcodes, not
globals, so they load as usual.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from sbnn.data import DataError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer


class ForbiddenGlobalError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


def _encode_latin1(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    # Python 3 writes bytes into protocol 0-2 pickles as _codecs.encode(text, "latin1"); allow only that.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise ForbiddenGlobalError("_codecs.encode is allowed only as encode(str, 'latin1')")
    return text.encode("latin-1")


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a pickle, where numpy only passes it to ``_reconstruct``. Calling it
    (``numpy.ndarray(shape)`` would allocate any size the file declares, uninitialised) is refused."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise ForbiddenGlobalError("numpy.ndarray may only be named, not called")


def _empty_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') followed by __setstate__ with the data,
    # which checks the data's length; any other shape here would allocate what the file declares.
    if subtype not in (_NdarrayType, np.ndarray) or tuple(shape) != (0,):
        raise ForbiddenGlobalError("_reconstruct is allowed only as numpy pickles arrays: (ndarray, (0,), ...)")
    return _reconstruct(np.ndarray, (0,), dtype)


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy", "dtype"): np.dtype,
    # numpy 1.x pickles (the real CIFAR files) say numpy.core; numpy 2.x ones say numpy._core.
    ("numpy.core.multiarray", "_reconstruct"): _empty_array,
    ("numpy._core.multiarray", "_reconstruct"): _empty_array,
    # Protocol 5 pickles of arrays.
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _encode_latin1,
}


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS` and refuses persistent ids."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise ForbiddenGlobalError(f"forbidden global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenGlobalError("persistent ids are not allowed")


def restricted_pickle_load(path: str | os.PathLike[str], *, encoding: str = "bytes", expected: str = "a pickle") -> Any:
    """Load a pickle file allowing only numpy arrays/dtypes and plain containers.

    Args:
        path: the pickle file.
        encoding: how Python-2 ``str`` objects are decoded (``"bytes"`` keeps them as bytes).
        expected: the format named in error messages.

    Raises:
        DataError: the file is missing, truncated, declares an object larger than itself, or names any
            other global (nothing it names is imported or called).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected {expected}")
    return restricted_pickle_loads(path.read_bytes(), path, encoding=encoding, expected=expected)


def restricted_pickle_loads(data: bytes, source: str | os.PathLike[str], *, encoding: str = "bytes",
                            expected: str = "a pickle") -> Any:
    """:func:`restricted_pickle_load` of bytes already read (e.g. decompressed); ``source`` names them in errors."""
    path = source
    # Walk the opcodes without building anything: length-prefixed opcodes that claim more bytes than
    # remain (which the C unpickler might allocate up front) and truncation are caught here.
    try:
        for _opcode, _argument, _position in pickletools.genops(io.BytesIO(data)):
            pass
    except Exception as error:
        raise DataError(f"{path}: malformed or truncated pickle ({_one_line(error)}); expected {expected}") from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    except ForbiddenGlobalError as error:
        raise DataError(
            f"{path}: refused to unpickle: {error} (only numpy arrays and plain containers are allowed); "
            f"expected {expected}"
        ) from None
    except Exception as error:  # anything else from untrusted bytes means a malformed file
        raise DataError(
            f"{path}: malformed pickle ({type(error).__name__}: {_one_line(error)}); expected {expected}"
        ) from None
