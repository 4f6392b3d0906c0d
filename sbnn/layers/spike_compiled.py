"""The sparse 0/1-input product's scans compiled with numba (:func:`sbnn.layers.bayesian.spike_linear`).

:mod:`sbnn.layers.bayesian` imports this module on first use, for CPU tensors of ``float32`` or ``float64``,
and runs its torch and numpy operations where numba is not installed; importing ``sbnn`` never imports
numba.  The kernels make one pass each, in the order of the torch operations they replace, so that their
results are theirs bit for bit: :func:`find_ones` and :func:`index_of_ones` find the ones of a 0/1 input in
row-major order (numpy's ``flatnonzero`` and a division by the row length), :func:`scatter_rows` sums the
output gradient's rows into the weight gradient's (the sparse matrix product ``x^T grad``, its sums in the
order of the rows).
Compiled code is cached on disk (``cache=True``): only the first run on a machine compiles.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def find_ones(x: np.ndarray, columns: np.ndarray, offsets: np.ndarray) -> int:
    """The columns of the nonzero values of ``x`` (``(rows, n)``, C-contiguous), in row-major order.

    Writes them to ``columns`` (int32, at least as long as the number of nonzero values) and the start of
    row ``r``'s in ``columns`` to ``offsets[r]`` (``offsets`` ``(rows + 1,)`` int64, its last entry the
    count).  Returns the count, or -1 if some value is neither 0 nor 1.
    """
    count = 0
    other = False
    for r in range(x.shape[0]):
        offsets[r] = count
        row = x[r]
        for c in range(row.shape[0]):
            value = row[c]
            if value != 0:   # rare in spike data: the branch is cheaper than writing every element
                other |= value != 1
                columns[count] = c
                count += 1
    offsets[x.shape[0]] = count
    return -1 if other else count


@njit(cache=True, nogil=True)
def index_of_ones(columns: np.ndarray, offsets: np.ndarray, index: np.ndarray) -> None:
    """``index[:, k] = (column, row)`` of each one :func:`find_ones` found (``index`` ``(2, count)`` int64)."""
    for r in range(offsets.shape[0] - 1):
        for k in range(offsets[r], offsets[r + 1]):
            index[0, k] = columns[k]
            index[1, k] = r


@njit(cache=True, nogil=True)
def scatter_rows(columns: np.ndarray, offsets: np.ndarray, grad: np.ndarray, out: np.ndarray) -> None:
    """``out[c] += grad[r]`` for every one ``(c, r)`` of a 0/1 input, rows in ascending order: ``x^T grad``.

    ``columns`` (int64: the index's first row) and ``offsets`` (``(rows + 1,)`` int64) as
    :func:`index_of_ones` and :func:`find_ones` write them (row ``r``'s ones are
    ``columns[offsets[r]:offsets[r + 1]]``); ``grad`` ``(rows, m)`` and ``out``
    ``(n, m)``, C-contiguous, of one float dtype, ``out`` zeros on entry for the product itself.
    """
    for r in range(offsets.shape[0] - 1):
        row = grad[r]
        for k in range(offsets[r], offsets[r + 1]):
            target = out[columns[k]]
            for j in range(row.shape[0]):
                target[j] += row[j]
