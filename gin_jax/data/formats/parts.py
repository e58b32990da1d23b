"""An input that is several files: one file, a directory of part files, or a glob.

Every format reads its input through these: a day of logs split into part files
(Spark's and Hive's output, `split -l`, one file per hour) or a folder of days is one
dataset, its parts read in sorted path order. A directory means every file under it,
recursively, except names starting with "_" or "." (Spark's _SUCCESS, .crc files,
editors' swap files); a path with `*`, `?` or `[` is a glob (`**` recurses).
"""

from __future__ import annotations

import glob
import os

from gin_jax.data.errors import DataError


def is_many(path: str | os.PathLike) -> bool:
  """Whether `path` names a directory or a glob rather than one file."""
  path = os.fspath(path)
  return not os.path.isfile(path) and (os.path.isdir(path) or any(c in path for c in "*?["))


def part_files(path: str | os.PathLike, what: str = "files") -> list[str]:
  """The files of an input (a file, a directory or a glob), in reading order.

  Args:
    path: the input.
    what: how the error for a directory or glob without files names them.

  Raises:
    DataError: nothing matches.
  """
  path = os.fspath(path)
  if os.path.isfile(path):
    return [path]
  if os.path.isdir(path):
    found = []
    for root, dirs, files in os.walk(path):
      dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
      found += [os.path.join(root, f) for f in files if not f.startswith(("_", "."))]
  elif any(c in path for c in "*?["):
    found = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
  else:
    raise DataError(f"{path}: no such file or directory")
  if not found:
    raise DataError(f"{path}: no {what}")
  return sorted(found)


def first(path: str | os.PathLike) -> str:
  """The first part of an input that is not empty (what its layout is read from)."""
  files = part_files(path)
  return next((f for f in files if os.path.getsize(f) > 0), files[0])


def fingerprint(path: str | os.PathLike, what: str = "files", list_one: bool = False) -> dict:
  """What prepare's cache key hashes of an input: its size and mtime; of several
  parts (or of one with `list_one`), their total size, the newest mtime and every
  part's (path, size, mtime)."""
  files = part_files(path, what)
  if not list_one and not is_many(path):
    st = os.stat(files[0])
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
  parts = []
  for p in files:
    st = os.stat(p)
    parts.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
  return {
    "size": sum(size for _, size, _ in parts),
    "mtime_ns": max(mtime for _, _, mtime in parts),
    "parts": parts,
  }
