"""Raw files -> a cached, compact on-disk dataset, in two streaming passes.

Pass 1 reads the text once, in chunks of whole lines parsed in worker threads: it
validates rows (a bad row raises, or is counted and skipped), assigns rows of the
training file to splits, counts the categories of the training split only, and keeps
the parsed chunk (binary keys and numbers, ~0.3 KB per Criteo row) in memory up to a
budget and in a temporary spill file beyond it. Between the passes the vocabularies
are cut at min_count and the field blocks laid out. Pass 2 streams the parsed chunks,
encodes them and writes ids, labels and source lines straight into preallocated .npy
memory maps. Memory is bounded by the chunk size, the spill budget and the number of
distinct categories, never by the number of rows; text is parsed (and gzip
decompressed) only once.

Layout of a prepared dataset (cache_dir/<format>-<key>/):
  meta.json                            DatasetMeta: fields, offsets, vocabularies,
                                       row counts, positive rates, bad rows, options
  {train,valid,test}/ids.npy           int32 [N, f]
  {train,valid,test}/labels.npy        float32 [N]
  {train,valid,test}/line_numbers.npy  int64 [N] (lines of the file the row came from)
  {train,valid,test}/values.npy        float32 [N, f], only when meta.has_values
The key hashes the options and every input's (path, size, mtime): a second prepare()
with the same inputs and options reuses the directory without reading the inputs. The
directory is built under a temporary name and renamed when complete.

Random splits are decided per row by a seeded hash of its line number, so they need no
row count in advance and do not depend on chunking or on which rows were bad; the
ratios hold in expectation (binomially), not exactly.

format "synthetic" (the demo) writes a Criteo TSV with planted pairs into cache_dir
(module synthetic, also public in gin_jax.data) and prepares that file.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from gin_jax.config import DataConfig
from gin_jax.data import formats, hashing, synthetic, text, vocab
from gin_jax.data.errors import BadRowPolicy, DataError, no_space
from gin_jax.data.formats import CsvSchema, Layout, RawChunk
from gin_jax.data.meta import DatasetMeta, FieldSpec, Split, load_split
from gin_jax.data.spill import Spill, ordered_map

SPLITS = ("train", "valid", "test")
PREPARE_VERSION = 2  # Bump when the on-disk result of the same inputs changes.
_log = logging.getLogger(__name__)


def default_workers() -> int:
  """Threads that parse chunks (numpy releases the GIL for most of the work)."""
  return max(1, min(4, os.cpu_count() or 1))


# ------------------------------------------------------------------ prepare


def prepare(
  cfg: DataConfig,
  cache_dir: str | os.PathLike,
  *,
  progress: bool = True,
  workers: int | None = None,
  spill_memory: int = 1 << 30,
) -> tuple[DatasetMeta, dict[str, Split]]:
  """Preprocesses cfg's files (or reuses the cached result) and opens the splits.

  Args:
    cfg: the data config. format "synthetic" writes a Criteo TSV with planted pairs
      (cfg.synthetic_*) into cache_dir and prepares that; meta.planted_pairs lists them.
    cache_dir: where prepared datasets live (one subdirectory per inputs+options key).
    progress: show tqdm progress bars on stderr.
    workers: parsing threads (default: up to 4, one per core).
    spill_memory: bytes of parsed rows kept in memory between the passes (~0.3 KB per
      Criteo row); beyond it they go to a temporary file next to the result.

  Returns:
    (metadata, {"train", "valid", "test"} -> Split of read-only memory maps). A split
    has 0 rows when its ratio is 0 and no file was given for it.
  """
  if cfg.format == "synthetic":
    return _prepare_synthetic(cfg, cache_dir, progress, workers, spill_memory)
  if not cfg.train:
    raise ValueError("DataConfig.train (the training file) is required")
  sources = [
    (role, os.path.abspath(path))
    for role, path in (("train", cfg.train), ("valid", cfg.valid), ("test", cfg.test))
    if path
  ]
  for _, path in sources:
    if cfg.format != "parquet" and not os.path.isfile(path):
      raise DataError(f"{path}: no such file")
  schema = None
  if cfg.format in ("csv", "parquet"):
    if not cfg.schema:
      raise DataError(f"{cfg.format} input needs a schema file (DataConfig.schema / --schema)")
    schema = CsvSchema.load(cfg.schema)
  options = _options(cfg, schema)
  inputs = [
    {"role": role, "path": path, **_fingerprint(cfg.format, path)} for role, path in sources
  ]
  key = hashlib.sha256(
    json.dumps([PREPARE_VERSION, options, inputs], sort_keys=True).encode()
  ).hexdigest()[:16]
  out_dir = os.path.join(cache_dir, f"{cfg.format}-{key}")
  if not os.path.exists(os.path.join(out_dir, "meta.json")):
    remove_stale_temporaries(cache_dir)
    tmp_dir = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
      builder = _Builder(
        cfg, schema, options, inputs, progress, workers or default_workers(), spill_memory
      )
      meta = builder.build(tmp_dir)
      _save_meta(meta, tmp_dir)
      try:
        os.replace(tmp_dir, out_dir)
      except OSError:  # Another process finished the same dataset first: use theirs.
        if not os.path.exists(os.path.join(out_dir, "meta.json")):
          raise
    finally:
      shutil.rmtree(tmp_dir, ignore_errors=True)
  return open_prepared(out_dir)


def remove_stale_temporaries(cache_dir: str | os.PathLike) -> list[str]:
  """Deletes `<name>.tmp-<pid>` build directories whose process is gone.

  A preparation that was killed (or died of a full disk) leaves its
  temporary directory behind; the next preparation in the same cache removes
  it. Directories of live processes (another run building now) are kept.

  Returns:
    The directories removed.
  """
  removed = []
  if not os.path.isdir(cache_dir):
    return removed
  for name in os.listdir(cache_dir):
    head, sep, pid = name.rpartition(".tmp-")
    if not sep or not head or not pid.isdigit() or _alive(int(pid)):
      continue
    path = os.path.join(cache_dir, name)
    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
    _log.warning("removed %s, left behind by process %s (killed during preparation?)", path, pid)
    removed.append(path)
  return removed


def _alive(pid: int) -> bool:
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process: alive.
    return True
  return True


def _save_meta(meta: DatasetMeta, directory: str) -> None:
  try:
    meta.save(directory)
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    raise no_space(os.path.join(directory, "meta.json"), len(meta.to_json())) from None


def _fingerprint(fmt: str, path: str) -> dict:
  """What the cache key hashes of an input: size and mtime (parquet: of every part)."""
  if fmt == "parquet":
    from gin_jax.data import parquet  # Local: pyarrow is optional.

    return parquet.fingerprint(path)
  st = os.stat(path)
  return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def open_prepared(directory: str | os.PathLike) -> tuple[DatasetMeta, dict[str, Split]]:
  """Opens a prepared dataset directory (as written by prepare)."""
  meta = DatasetMeta.load(directory)
  return meta, {s: load_split(os.path.join(directory, s)) for s in SPLITS}


def _options(cfg: DataConfig, schema: CsvSchema | None) -> dict[str, Any]:
  return {
    "format": cfg.format,
    "split": list(split_ratios(cfg)),
    "seed": cfg.seed,
    "bad_rows": cfg.bad_rows,
    "numeric": cfg.numeric,
    "min_count": cfg.min_count,
    "hash_buckets": cfg.hash_buckets,
    "schema": schema.to_dict() if schema else None,
  }


def split_ratios(cfg: DataConfig) -> tuple[float, float, float]:
  """Ratios in which the training FILE is split: a split given as its own file gets
  nothing from it, and the others are rescaled to sum to 1."""
  r = [
    0.0 if (name == "valid" and cfg.valid) or (name == "test" and cfg.test) else x
    for name, x in zip(SPLITS, cfg.split)
  ]
  total = sum(r)
  if total <= 0:
    raise ValueError(f"split {cfg.split} leaves nothing of the training file")
  return tuple(x / total for x in r)


def assign_splits(lines: np.ndarray, ratios, seed: int) -> np.ndarray:
  """uint8 [n] split (0 train, 1 valid, 2 test) of each row, from its line number.

  A seeded hash of the line number, compared with the cumulative ratios; a split whose
  ratio is 0 gets no row.
  """
  salt = np.uint64((seed * 0x9E37_79B1 + 1) % 2**64)
  u = hashing.hash_keys(np.asarray(lines, np.uint64) ^ salt)
  u = (u >> np.uint64(11)).astype(np.float64) * 2.0**-53
  t1 = ratios[0] if ratios[1] + ratios[2] > 0 else 2.0
  t2 = ratios[0] + ratios[1] if ratios[2] > 0 else 2.0
  return ((u >= t1).astype(np.uint8) + (u >= t2)).astype(np.uint8)


@dataclasses.dataclass
class _Stats:
  rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3, np.int64))
  positives: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
  values_not_one: bool = False


class _Builder:
  """Runs the two passes for one prepare() call."""

  def __init__(self, cfg: DataConfig, schema, options, inputs, progress, workers, spill_memory):
    self.cfg, self.schema, self.options = cfg, schema, options
    self.inputs, self.progress, self.workers = inputs, progress, workers
    self.spill_memory = spill_memory
    self.ratios = tuple(options["split"])
    train_layout = formats.detect_layout(cfg.format, inputs[0]["path"], schema, has_labels=True)
    nf = len(train_layout.columns) if cfg.format == "libfm" else None
    self.layouts = [train_layout] + [
      formats.detect_layout(
        cfg.format, i["path"], schema, True, nf, train_header=train_layout.header or None
      )
      for i in inputs[1:]
    ]
    cols = train_layout.columns
    for layout, i in zip(self.layouts[1:], inputs[1:]):
      if [(c.name, c.kind) for c in layout.columns] != [(c.name, c.kind) for c in cols]:
        raise DataError(f"{i['path']}: columns differ from the training file's")
    hashing = cfg.hash_buckets > 0
    self.counted = [
      c
      for c in cols
      if (c.kind == "categorical" and not hashing)
      or (c.kind == "numeric" and cfg.numeric == "bucketize")
    ]

  def build(self, out_dir: str) -> DatasetMeta:
    # ---- pass 1: parse and validate the text once, split, count, spill
    counters = {c.name: vocab.KeyCounter() for c in self.counted}
    missing = dict.fromkeys(counters, 0)  # Training rows where the column is empty.
    stats = _Stats()
    reports = {}
    os.makedirs(out_dir, exist_ok=True)
    spill = Spill(os.path.join(out_dir, "spill.bin"), self.spill_memory)
    for inp, layout in zip(self.inputs, self.layouts):
      policy = BadRowPolicy(self.cfg.bad_rows, inp["path"])
      for raw, split, bad, counts in self._parse(inp, layout):
        policy.handle(bad)
        for name, (keys, n, longs, n_missing) in counts.items():
          counters[name].add_unique(keys, n)
          counters[name].long.update(longs)
          missing[name] += n_missing
        stats.rows += np.bincount(split, minlength=3)
        stats.positives += np.bincount(split, weights=raw.labels, minlength=3)
        stats.values_not_one |= raw.values is not None and bool((raw.values != 1).any())
        spill.append(raw, split)
      reports[inp["path"]] = policy.report
      if policy.report.count:
        _log.warning("%s: %s", inp["path"], policy.report.summary())
    if stats.rows[0] == 0:
      raise DataError(f"{self.inputs[0]['path']}: no rows for the training split")
    meta = self._meta(counters, stats, reports, _constant_columns(counters, missing))
    if meta.constant_fields:
      _log.warning("%s", constant_warning(meta.constant_fields))
    # ---- pass 2: stream the parsed chunks, encode, write the splits
    arrays = self._allocate(out_dir, meta, stats.rows)
    filled = np.zeros(3, np.int64)
    encoder = meta.encoder
    columns = self.layouts[0].columns
    chunks = spill.chunks(
      tuple(c.name for c in columns if c.kind == "categorical"),
      tuple(c.name for c in columns if c.kind == "numeric"),
    )
    encoded = ordered_map(lambda c: (*c, encoder.encode(c[0])), chunks, self.workers)
    with self._bar(int(stats.rows.sum()), "pass 2/2 encoding", "rows") as bar:
      for raw, split, (ids, values) in encoded:
        bar.update(len(raw))
        for s in np.flatnonzero(np.bincount(split, minlength=3)):
          rows = split == s
          a, b = filled[s], filled[s] + np.count_nonzero(rows)
          out = arrays[s]
          out["ids"][a:b] = ids[rows]
          out["labels"][a:b] = raw.labels[rows]
          out["line_numbers"][a:b] = raw.lines[rows]
          if "values" in out:
            out["values"][a:b] = values[rows]
          filled[s] = b
    if (filled != stats.rows).any():
      raise RuntimeError(f"pass 2 wrote {filled} rows, pass 1 counted {stats.rows}")
    for out in arrays:
      for arr in out.values():
        arr.flush()
    return meta

  def _bar(self, total: int, desc: str, unit: str):
    return tqdm(
      total=total,
      desc=desc,
      unit=unit,
      unit_scale=True,
      file=sys.stderr,
      disable=not self.progress,
      mininterval=0.5,
    )

  def _parse(self, inp, layout: Layout):
    """Parses the chunks of one input in worker threads, in order.

    Yields (raw chunk, split of each row, bad rows, category counts of its train rows).
    """
    role = inp["role"]
    fixed = SPLITS.index(role) if role != "train" else None
    seed, ratios = self.cfg.seed, self.ratios
    bucketize = self.cfg.numeric == "bucketize"

    def work(chunk):
      raw, bad = formats.parse_chunk(chunk, layout)
      if bucketize:
        raw = dataclasses.replace(raw, numbers=vocab.bucketize(raw.numbers), bucketized=True)
      if fixed is None:
        split = assign_splits(raw.lines, ratios, seed)
      else:
        split = np.full(len(raw), fixed, np.uint8)
      return raw, split, bad, self._count(raw, split)

    name = os.path.basename(inp["path"])
    with self._bar(inp["size"], f"pass 1/2 parsing {name}", "B") as bar:
      chunks = formats.read_chunks(inp["path"], layout, on_progress=bar.update)
      yield from ordered_map(work, chunks, self.workers)

  def _count(self, raw: RawChunk, split: np.ndarray):
    """Unique keys with counts per counted column, over the chunk's training rows."""
    train = split == 0
    if not train.all():
      raw = raw.take(train)
    counts = {}
    for col in self.counted:
      if col.kind == "numeric":  # Already bucketized; keys of NaN (missing) dropped.
        keys, n = vocab.count_unique(vocab.number_keys(raw.numbers_of(col.name)))
        empty = np.isnan(vocab.key_numbers(keys))
        real = ~empty
        longs = {}
      else:
        keys, n = vocab.count_unique(raw.keys_of(col.name))
        empty = keys == text.MISSING_KEY
        real = ~empty & (keys != text.LONG_KEY)
        longs = collections.Counter(raw.long_tokens_of(col.name).values())
      counts[col.name] = (keys[real], n[real], longs, int(n[empty].sum()))
    return counts

  def _meta(self, counters, stats: _Stats, reports, constant: list[str]) -> DatasetMeta:
    cfg, fields, vocabs, offset = self.cfg, [], {}, 0
    for col in self.layouts[0].columns:
      if col.kind == "categorical" and cfg.hash_buckets > 0:
        transform, size = "hash", 2 + cfg.hash_buckets
      elif col.kind == "categorical":
        tokens = counters[col.name].vocabulary(cfg.min_count)
        vocabs[col.name] = [t.decode("utf-8") for t in tokens]
        transform, size = "vocab", 2 + len(tokens)
      elif cfg.numeric == "bucketize":
        vocabs[col.name] = counters[col.name].numbers(cfg.min_count)
        transform, size = "bucketize", 2 + len(vocabs[col.name])
      else:
        transform, size = "scale", 2
      fields.append(FieldSpec(col.name, col.kind, transform, offset, size))
      offset += size
    rows = {s: int(n) for s, n in zip(SPLITS, stats.rows)}
    rate = {
      s: (float(p / n) if n else None) for s, p, n in zip(SPLITS, stats.positives, stats.rows)
    }
    has_values = any(f.transform == "scale" for f in fields) or stats.values_not_one
    return DatasetMeta(
      format=cfg.format,
      fields=fields,
      num_table_rows=offset,
      vocab=vocabs,
      options=self.options,
      split_rows=rows,
      positive_rate=rate,
      skipped_rows={p: r.to_json_dict() for p, r in reports.items()},
      inputs=self.inputs,
      schema=self.schema.to_dict() if self.schema else None,
      columns=list(self.layouts[0].header) or None,
      has_values=has_values,
      constant_fields=constant,
    )

  def _allocate(self, out_dir: str, meta: DatasetMeta, rows: np.ndarray):
    """The splits' .npy memory maps, with their disk space reserved up front.

    The maps are filled by storing into pages; on a full disk (a tmpfs above
    all) that is SIGBUS, a crash without a message. So every file's blocks are
    allocated (posix_fallocate) before any page is touched, and a full disk is
    a DataError naming the file and the space needed.
    """
    nf = meta.num_fields
    files = []
    for name, n in zip(SPLITS, rows):
      d = os.path.join(out_dir, name)
      os.makedirs(d, exist_ok=True)
      n = int(n)  # A numpy integer would be written into the .npy header as np.int64(n).
      spec = {
        "ids": (np.int32, (n, nf)),
        "labels": (np.float32, (n,)),
        "line_numbers": (np.int64, (n,)),
      }
      if meta.has_values:
        spec["values"] = (np.float32, (n, nf))
      files.append({k: (os.path.join(d, k + ".npy"), dt, shape) for k, (dt, shape) in spec.items()})
    needed = sum(
      np.dtype(dt).itemsize * int(np.prod(shape)) + 128
      for split in files
      for _, dt, shape in split.values()
    )
    first = files[0]["ids"][0]
    if shutil.disk_usage(out_dir).free < needed:
      raise no_space(first, needed)
    arrays = []
    for split in files:
      out = {}
      for k, (path, dt, shape) in split.items():
        try:
          out[k] = open_memmap(path, mode="w+", dtype=dt, shape=shape)
          _reserve(path, out[k].offset + out[k].nbytes)
        except OSError as e:
          if e.errno != errno.ENOSPC:
            raise
          raise no_space(path, needed) from None
      arrays.append(out)
    return arrays


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


def _prepare_synthetic(cfg: DataConfig, cache_dir, progress, workers, spill_memory):
  spec = synthetic.SyntheticSpec(
    num_rows=cfg.synthetic_rows,
    max_vocab=cfg.synthetic_vocab,
    num_planted=cfg.synthetic_planted,
    noise=cfg.synthetic_noise,
    seed=cfg.seed,
  )
  key = hashlib.sha256(json.dumps(dataclasses.asdict(spec), sort_keys=True).encode())
  path = os.path.join(cache_dir, f"synthetic-{key.hexdigest()[:16]}.tsv")
  pairs_path = path + ".pairs.json"
  if not os.path.exists(pairs_path):
    os.makedirs(cache_dir, exist_ok=True)
    try:
      pairs = synthetic.write_criteo_tsv(path, spec)
      with open(pairs_path + ".tmp", "w") as f:
        json.dump(pairs, f)
      os.replace(pairs_path + ".tmp", pairs_path)
    except OSError as e:
      if e.errno != errno.ENOSPC:
        raise
      written = os.path.getsize(path) if os.path.exists(path) else 0
      if os.path.exists(path):
        os.remove(path)  # A partial file: give the space back.
      raise no_space(path, written, at_least=True) from None
  with open(pairs_path) as f:
    pairs = [list(p) for p in json.load(f)]
  real = dataclasses.replace(cfg, format="criteo", train=path, valid=None, test=None)
  meta, splits = prepare(
    real, cache_dir, progress=progress, workers=workers, spill_memory=spill_memory
  )
  return dataclasses.replace(meta, planted_pairs=pairs), splits


def _constant_columns(counters: dict, missing: dict) -> list[str]:
  """Counted columns with one value (or none) in every training row."""
  out = []
  for name, counter in counters.items():
    distinct = counter.num_distinct()
    if distinct == 0 or (distinct == 1 and missing[name] == 0):
      out.append(name)
  return out


def constant_warning(names: list[str]) -> str:
  """The preparation summary's warning about constant columns."""
  return (
    f"warning: column(s) {names} hold the same value in every training row, so they carry "
    "no information (and enter every interaction); drop them, or list them under the "
    "schema's 'ignore'"
  )
