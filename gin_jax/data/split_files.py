"""The .npy files of a prepared dataset's splits, created at full size before pass 2.

Each split directory holds ids.npy (int32 [N, f]), labels.npy (float32 [N]),
line_numbers.npy (int64 [N]) and, when the dataset has values, values.npy (float32
[N, f]); meta.load_split reads them back as memory maps.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence

import numpy as np
from numpy.lib.format import open_memmap

from gin_jax.data.errors import no_space, write_error

_NPY_HEADER_BYTES = 128  # Counted for the header of each .npy file.


def allocate(
  directory: str, splits: Sequence[str], rows: Sequence[int], num_fields: int, has_values: bool
) -> list[dict[str, np.memmap]]:
  """The splits' .npy memory maps, with their disk space reserved up front.

  The maps are filled by storing into pages; on a full disk (a tmpfs above
  all) that is SIGBUS, a crash without a message. So every file's blocks are
  allocated (posix_fallocate) before any page is touched, and a full disk (or
  a file over the size limit, ulimit -f) is a DataError naming the file and
  the space needed.

  Args:
    directory: the dataset directory; split s goes to directory/s/.
    splits: the split names.
    rows: the rows of each split.
    num_fields: f, the fields of a row.
    has_values: whether to create values.npy.

  Returns:
    Per split, {"ids", "labels", "line_numbers"[, "values"]} -> writable memmap.
  """
  files = [
    _specs(os.path.join(directory, name), int(n), num_fields, has_values)
    for name, n in zip(splits, rows)
  ]
  needed = sum(
    np.dtype(dt).itemsize * int(np.prod(shape)) + _NPY_HEADER_BYTES
    for split in files
    for _, dt, shape in split.values()
  )
  first = files[0]["ids"][0]
  if shutil.disk_usage(directory).free < needed:
    raise no_space(first, needed)
  arrays = []
  for split in files:
    out = {}
    for k, (path, dt, shape) in split.items():
      try:
        out[k] = open_memmap(path, mode="w+", dtype=dt, shape=shape)
        _reserve(path, out[k].offset + out[k].nbytes)
      except OSError as e:
        raise write_error(path, e, needed) from None
    arrays.append(out)
  return arrays


def _specs(directory: str, n: int, num_fields: int, has_values: bool) -> dict[str, tuple]:
  """{name: (path, dtype, shape)} of one split's files; creates its directory.

  n must be a Python int: a numpy integer would be written into the .npy header as
  np.int64(n).
  """
  os.makedirs(directory, exist_ok=True)
  spec = {
    "ids": (np.int32, (n, num_fields)),
    "labels": (np.float32, (n,)),
    "line_numbers": (np.int64, (n,)),
  }
  if has_values:
    spec["values"] = (np.float32, (n, num_fields))
  return {k: (os.path.join(directory, k + ".npy"), dt, shape) for k, (dt, shape) in spec.items()}


def _reserve(path: str, size: int) -> None:
  """Allocates the blocks of path's first `size` bytes (ENOSPC now, not SIGBUS later)."""
  if size == 0:
    return
  fd = os.open(path, os.O_RDWR)
  try:
    os.posix_fallocate(fd, 0, size)
  except OSError as e:
    if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
      raise  # Above all ENOSPC. The others: a filesystem without fallocate.
  finally:
    os.close(fd)
