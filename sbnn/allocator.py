"""Process-wide memory allocator setting for training on the CPU.

glibc serves every block above its (adaptive, at most 32 MiB) mmap threshold with a fresh mapping and
returns it to the system when freed, so a training step that makes whole-sequence tensors page-faults
them in again every step: on the 700-256-20 benchmark that cost the SBNN step 5-20 % (more under memory
pressure on the host).  Keeping freed memory in the process, as jemalloc and tcmalloc do, removes that;
the process then holds its peak working set until it exits, which a training run does anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_ONE_GIB = 1 << 30


def keep_freed_memory() -> bool:
    """Ask glibc to allocate blocks below 1 GiB from its heap and keep freed memory for reuse.

    Returns whether the setting took effect: ``False`` off Linux/glibc, or when ``SBNN_KEEP_FREED_MEMORY``
    is ``0``.  Call it before the large tensors are made; it does not move existing ones.
    """
    if os.environ.get("SBNN_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # not glibc (e.g. musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _ONE_GIB)) and bool(mallopt(_M_TRIM_THRESHOLD, _ONE_GIB))


__all__ = ["keep_freed_memory"]
