"""Replay: a continued run's training split, mixed with a sample of the rows its source
trained on (`--init-from` with train.init_replay, issue #38).

A model continued on a small new period forgets what the large old one taught it;
training on a sample of the old rows beside the new ones keeps that knowledge
where it is still true. The sample is drawn from the source run's prepared
training split, from its data cache: no text is read or parsed again. That split
is the one its own training read, so a run that replayed passes on a replay of
its own (the older periods thin out geometrically along a chain of days).

The source's ids are in the source's table: a vocabulary grows by appending
(prepare.grow_vocabularies), so an old row's category keeps its place in its
field's block and only the block moves, by what the fields before it grew.

Layout (cache_dir/train+replay-<key>/, written once under a temporary name):
  train/{ids,labels,line_numbers[,values]}.npy   the new training rows, then the
                                                 replayed ones (line_numbers of
                                                 those: minus the source's line)
  replay.json                                    where the rows came from, counts
The trainer shuffles every epoch, so the order within the file does not matter.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from gin_jax import files
from gin_jax.data import split_files
from gin_jax.data.errors import DataError
from gin_jax.data.meta import META_FILE, DatasetMeta, Split, load_split

INFO_FILE = "replay.json"
PREFIX = "train+replay-"
CHUNK_ROWS = 1 << 16  # rows copied (and re-addressed) at a time: bounded memory


def id_shift(old: DatasetMeta, new: DatasetMeta) -> np.ndarray:
  """int64 [slots]: what to add to an old row's id in each slot to address the new table.

  Raises DataError unless `new` grew from `old` (same fields, slots, encodings).
  """
  shapes = lambda m: [(f.name, f.kind, f.transform, f.max_values) for f in m.fields]
  if shapes(old) != shapes(new) or any(fn.size < fo.size for fo, fn in zip(old.fields, new.fields)):
    raise DataError("replay: the new dataset did not grow from the source's (other fields)")
  return np.concatenate(
    [
      np.full(fo.max_values, fn.offset - fo.offset, np.int64)
      for fo, fn in zip(old.fields, new.fields)
    ]
  )


def source_train(run_dirs: list[Path], dataset: DatasetMeta) -> tuple[Path, Split]:
  """The training split the source trained on: (its folder, the split).

  Looked for in each of `run_dirs`' data cache: a replay-mixed split built on the
  source's dataset (the newest, if several), else the prepared dataset itself
  (its meta.json's fingerprint is the source's).
  """
  want = dataset.fingerprint()
  looked = []
  for run in run_dirs:
    cache = Path(run) / "data" / "cache"
    looked.append(str(cache))
    if not cache.is_dir():
      continue
    mixed, prepared = [], []
    for d in cache.iterdir():
      if d.name.startswith(PREFIX) and (d / INFO_FILE).exists():
        info = json.loads((d / INFO_FILE).read_text())
        if info.get("dataset") == want:
          mixed.append(d)
      elif (d / META_FILE).exists() and (d / "train").is_dir():
        try:
          if DatasetMeta.load(d).fingerprint() == want:
            prepared.append(d)
        except (DataError, ValueError, KeyError):
          continue
    if mixed:
      newest = max(mixed, key=lambda d: (d / INFO_FILE).stat().st_mtime)
      return newest, load_split(newest / "train")
    if prepared:
      return prepared[0], load_split(prepared[0] / "train")
  raise DataError(
    "train.init_replay: the source's prepared training rows are not in "
    f"{' or '.join(looked)} (replay reads them from there; was the data cache "
    "removed?): set train.init_replay=0 to continue without replay"
  )


def mixed_train(
  new: Split,
  meta: DatasetMeta,
  source_dir: Path,
  old: Split,
  old_meta: DatasetMeta,
  ratio: float,
  seed: int,
  cache_dir: str | os.PathLike,
  log=print,
) -> tuple[Split, dict]:
  """`new` plus round(ratio x len(new)) rows of `old` (all of them if it has fewer),
  drawn without replacement by `seed`, re-addressed to `meta`'s table; built once.

  Returns (the mixed split, its replay.json record).
  """
  want = min(len(old), int(round(ratio * len(new))))
  key = hashlib.sha256(
    json.dumps(
      [str(source_dir), old_meta.fingerprint(), len(old), meta.fingerprint(), len(new), want, seed]
    ).encode()
  ).hexdigest()[:16]
  out = Path(cache_dir) / f"{PREFIX}{key}"
  if (out / INFO_FILE).exists():
    return load_split(out / "train"), json.loads((out / INFO_FILE).read_text())
  shift = id_shift(old_meta, meta)
  rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E9_1A7]))
  pick = np.sort(rng.choice(len(old), size=want, replace=False)) if want else np.zeros(0, np.int64)
  has_values = not (new.values_are_ones and old.values_are_ones)
  tmp = Path(cache_dir) / f"{PREFIX}{key}.tmp-{os.getpid()}"  # prepare's stale-temporary name
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  (dst,) = split_files.allocate(str(tmp), ["train"], [len(new) + want], meta.num_slots, has_values)
  n = len(new)
  for a in range(0, n, CHUNK_ROWS):  # the new rows as they are
    b = min(n, a + CHUNK_ROWS)
    dst["ids"][a:b] = new.ids[a:b]
    dst["labels"][a:b] = new.labels[a:b]
    dst["line_numbers"][a:b] = new.line_numbers[a:b]
    if has_values:
      dst["values"][a:b] = new.values[a:b]
  pad_old, pad_new = old_meta.pad_id, meta.pad_id
  positives = 0.0
  for a in range(0, want, CHUNK_ROWS):  # the replayed rows, re-addressed
    rows = pick[a : a + CHUNK_ROWS]
    ids = np.asarray(old.ids[rows], np.int64)
    ids = np.where(ids == pad_old, pad_new, ids + shift)
    s = slice(n + a, n + a + len(rows))
    dst["ids"][s] = ids.astype(np.int32)
    labels = old.labels[rows]
    dst["labels"][s] = labels
    positives += float(np.sum(labels, dtype=np.float64))
    lines = old.line_numbers[rows] if old.line_numbers is not None else rows + 1
    dst["line_numbers"][s] = -np.abs(np.asarray(lines, np.int64))
    if has_values:
      dst["values"][s] = old.values[rows]
  for arr in dst.values():
    arr.flush()
  del dst
  info = {
    "dataset": meta.fingerprint(),
    "source": str(source_dir),
    "source_dataset": old_meta.fingerprint(),
    "source_rows": len(old),
    "new_rows": n,
    "replayed_rows": int(want),
    "ratio": ratio,
    "seed": seed,
    "replayed_positive_rate": positives / want if want else None,
  }
  files.write_json(tmp / INFO_FILE, info)
  try:
    os.rename(tmp, out)
  except OSError:  # another process built it first: theirs is the same
    shutil.rmtree(tmp, ignore_errors=True)
  if want < round(ratio * n):
    log(
      f"replay: the source trained on {len(old):,} rows, fewer than {ratio} x {n:,}: all replayed"
    )
  return load_split(out / "train"), json.loads((out / INFO_FILE).read_text())
