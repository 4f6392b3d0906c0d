"""Small file utilities every package uses: atomic writes, writer locks, guards against hostile files.

- :mod:`safeio.atomic`: files and folders written so that readers see the old version or the new one,
  never half of either; a folder's writer lock; removal of what killed writers left.
- :mod:`safeio.hdf5`: checks an HDF5 reader makes before trusting a file (damaged heaps, declared sizes
  the file does not back).

It imports none of ``sbnn``, ``export`` and ``hw_sim`` (all three import it) and needs only the standard
library, so the Lava worker's environment can use it too.
"""
