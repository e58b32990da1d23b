"""Writes that readers never see half done: a temporary file beside the target, then a rename.

Every file gin_jax writes whole (reports, configs, seals, predictions,
metadata, exports, scores) goes through here. The rename is atomic on POSIX
file systems, so a reader (or a run killed mid-write) sees the old file or the
new one, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import numpy as np


def temp_path(path: str | os.PathLike) -> Path:
  """Where `path` is written before it is renamed into place (same directory, per process)."""
  path = Path(path)
  return path.with_name(f"{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, fsync: bool = False):
  """Opens a temporary file that replaces `path` when the block ends without an error.

  On an error the temporary file is removed and `path` is left as it was. An
  OSError names `path` (a failed write of the temporary file would name that).
  `fsync`: the data reaches the disk before the rename (checkpoint seals).
  """
  path = Path(path)
  tmp = temp_path(path)
  try:
    with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
      yield f
      if fsync:
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    tmp.unlink(missing_ok=True)
    raise OSError(e.errno, e.strerror, str(path)) from None
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def atomic_write(path: str | os.PathLike, content: str | bytes) -> None:
  """Writes `content` (text or bytes) to `path` atomically."""
  with atomic_open(path, "wb" if isinstance(content, bytes) else "w") as f:
    f.write(content)


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 2) -> None:
  """`obj` as JSON (numpy scalars as numbers, NaN / Inf as null), atomically."""
  atomic_write(path, json.dumps(jsonable(obj), indent=indent) + "\n")


def jsonable(x):
  """Plain JSON: numpy scalars as Python numbers, NaN and Inf as null."""
  if isinstance(x, dict):
    return {k: jsonable(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [jsonable(v) for v in x]
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x
