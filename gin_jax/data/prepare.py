"""Raw files -> a cached, compact on-disk dataset: what to prepare, where, and once.

prepare() names a dataset by its inputs and options, builds it once (module passes:
two streaming passes over the inputs, by threads of this process or by worker
processes past THREADS_UP_TO) under a temporary name renamed when complete, and
opens it. Memory is bounded by the chunk size, the spill budget and the number of
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
(synthetic.write_demo_input) and prepares that file.

Every format-specific step (finding a file's layout, reading it in chunks, parsing a
chunk) goes through the input's Format (module formats).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

from gin_jax.config import DataConfig
from gin_jax.data import formats, synthetic, text
from gin_jax.data import workers as workers_lib
from gin_jax.data.errors import DataError, write_error
from gin_jax.data.formats import CsvSchema, Format
from gin_jax.data.meta import DatasetMeta, Split, load_split
from gin_jax.data.passes import SPLITS, TwoPasses
from gin_jax.data.workers import assign_splits  # noqa: F401 (re-exported)

PREPARE_VERSION = 2  # Bump when the on-disk result of the same inputs changes.
_log = logging.getLogger(__name__)


# Inputs smaller than this are prepared in this process: a chunk is ~8 MB of text, so
# a smaller input has too few chunks for worker processes to pay for their start.
PROCESS_MIN_BYTES = 2 * text.CHUNK_BYTES
# Up to this many workers are threads of this process, more are processes. Measured
# on 2 cores (2M Criteo rows, benchmarks/README.md): 2 threads 1.73x one worker, 2
# processes 1.57x (they cost ~20% more CPU: a 0.5 s start each, the chunks through
# pipes). Threads keep ~15% of the work under the GIL, so their gain flattens (an
# Amdahl fit: 4.8x at 16) while processes keep scaling: the fit crosses at 3.
THREADS_UP_TO = 2


def default_workers() -> int:
  """Workers that parse and encode chunks: the cores available."""
  return workers_lib.available_cores()


# ------------------------------------------------------------------ prepare


def prepare(
  cfg: DataConfig,
  cache_dir: str | os.PathLike,
  *,
  progress: bool = True,
  workers: int | None = None,
  spill_memory: int = 1 << 30,
  base: DatasetMeta | None = None,
) -> tuple[DatasetMeta, dict[str, Split]]:
  """Preprocesses cfg's files (or reuses the cached result) and opens the splits.

  Args:
    cfg: the data config. format "synthetic" writes a Criteo TSV with planted pairs
      (cfg.synthetic_*) into cache_dir and prepares that; meta.planted_pairs lists them.
    cache_dir: where prepared datasets live (one subdirectory per inputs+options key).
    progress: show tqdm progress bars on stderr.
    workers: how many parse and encode chunks at once (default and at most: the cores
      available, workers.available_cores): threads of this process up to
      THREADS_UP_TO, worker processes beyond (module workers; started as chunks wait,
      so no more than the input has chunks), except for an input under
      PROCESS_MIN_BYTES. The result is the same bytes for any number.
    spill_memory: bytes of parsed rows kept in memory between the passes (~0.3 KB per
      Criteo row; with worker processes, over all of them); beyond it they go to
      temporary files next to the result.
    base: `--init-from`: the dataset of the run being continued. Its vocabularies
      keep their ids and grow by the categories of this training split that reach
      min_count and are not in them (appended per field, most frequent first);
      its encoding options (format, schema, numeric, hash_buckets) and columns
      must be this one's (else DataError naming them). meta.growth says, per
      field, how much was added and the OOV rate of this training split before
      and after the growth.

  Returns:
    (metadata, {"train", "valid", "test"} -> Split of read-only memory maps). A split
    has 0 rows when its ratio is 0 and no file was given for it.
  """
  if cfg.format == synthetic.SYNTHETIC:
    real, pairs = synthetic.write_demo_input(cfg, cache_dir)
    meta, splits = prepare(
      real, cache_dir, progress=progress, workers=workers, spill_memory=spill_memory, base=base
    )
    return dataclasses.replace(meta, planted_pairs=pairs), splits
  if not cfg.train:
    raise ValueError("DataConfig.train (the training file) is required")
  fmt = formats.get(cfg.format)
  inputs = _inputs(cfg, fmt)
  schema = _load_schema(cfg, fmt)
  options = _options(cfg, schema)
  if base is not None:
    check_encoding(base, options)
  grows = [base.fingerprint()] if base is not None else []  # a fresh dataset's key is unchanged
  key = hashlib.sha256(
    json.dumps([PREPARE_VERSION, options, inputs, *grows], sort_keys=True).encode()
  ).hexdigest()[:16]
  out_dir = os.path.join(cache_dir, f"{cfg.format}-{key}")
  if not os.path.exists(os.path.join(out_dir, "meta.json")):
    # More workers than cores only take memory (32 processes on 4 cores: 1.5 GB); and
    # worker processes start as chunks wait for them (workers.ProcessPool).
    workers = min(workers or default_workers(), workers_lib.available_cores())
    size = sum(int(i["size"]) for i in inputs)
    processes = workers > THREADS_UP_TO and size >= PROCESS_MIN_BYTES
    _build_once(
      out_dir,
      cache_dir,
      lambda tmp_dir: TwoPasses(
        cfg, fmt, schema, options, inputs, progress, workers, spill_memory, base, processes
      ).build(tmp_dir),
    )
  meta, splits = open_prepared(out_dir)
  _warn_constant_once(meta, out_dir)
  return meta, splits


_WARNED: set[str] = set()  # prepared datasets whose constant columns this process named


def _warn_constant_once(meta: DatasetMeta, out_dir: str) -> None:
  """Logs constant_warning the first time this process opens the dataset: once a command,
  however many runs (beat_linear's, an ensemble's members) share the prepared data."""
  real = os.path.realpath(out_dir)
  if meta.constant_fields and real not in _WARNED:
    _WARNED.add(real)
    _log.warning("%s", constant_warning(meta.constant_fields))


ENCODING_OPTIONS = ("format", "schema", "numeric", "hash_buckets")  # what --init-from keeps


def check_encoding(base: DatasetMeta, options: dict) -> None:
  """Raises DataError unless `options` encode rows as `base`'s (ENCODING_OPTIONS) do."""
  differ = [k for k in ENCODING_OPTIONS if base.options.get(k) != options.get(k)]
  if differ:
    shown = ", ".join(
      f"data.{k}: {base.options.get(k)!r} -> {options.get(k)!r}" if k != "schema"
      else "the schema's contents" for k in differ
    )  # fmt: skip
    raise DataError(
      f"the data of the continued run is encoded with other options ({shown}): "
      "--init-from keeps the format, schema, numeric mode and hashing of the run it continues"
    )


def _inputs(cfg: DataConfig, fmt: Format) -> list[dict]:
  """Role, absolute path and fingerprint (what the cache key hashes) of every input."""
  sources = [
    (role, os.path.abspath(path))
    for role, path in (("train", cfg.train), ("valid", cfg.valid), ("test", cfg.test))
    if path
  ]
  return [{"role": role, "path": path, **fmt.fingerprint(path)} for role, path in sources]


def _load_schema(cfg: DataConfig, fmt: Format) -> CsvSchema | None:
  """The schema file of a format that needs one (None for the others)."""
  if not fmt.needs_schema:
    return None
  if not cfg.schema:
    raise DataError(f"{cfg.format} input needs a schema file (DataConfig.schema / --schema)")
  return CsvSchema.load(cfg.schema).with_max_values(cfg.max_values)


def _build_once(out_dir: str, cache_dir, build: Callable[[str], DatasetMeta]) -> None:
  """Runs build(tmp_dir) and saves its metadata there, then renames tmp_dir to out_dir.

  Nothing is left under out_dir's name unless it is complete; a process that finished
  the same dataset first wins.
  """
  remove_stale_temporaries(cache_dir)
  tmp_dir = f"{out_dir}.tmp-{os.getpid()}"
  shutil.rmtree(tmp_dir, ignore_errors=True)
  try:
    meta = build(tmp_dir)
    _save_meta(meta, tmp_dir)
    try:
      os.replace(tmp_dir, out_dir)
    except OSError:  # Another process finished the same dataset first: use theirs.
      if not os.path.exists(os.path.join(out_dir, "meta.json")):
        raise
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)


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
    raise write_error(os.path.join(directory, "meta.json"), e, len(meta.to_json())) from None


def open_prepared(directory: str | os.PathLike) -> tuple[DatasetMeta, dict[str, Split]]:
  """Opens a prepared dataset directory (as written by prepare)."""
  meta = DatasetMeta.load(directory)
  return meta, {s: load_split(os.path.join(directory, s)) for s in SPLITS}


def _options(cfg: DataConfig, schema: CsvSchema | None) -> dict[str, Any]:
  options = {
    "format": cfg.format,
    "split": list(split_ratios(cfg)),
    "seed": cfg.seed,
    "bad_rows": cfg.bad_rows,
    "numeric": cfg.numeric,
    "min_count": cfg.min_count,
    "hash_buckets": cfg.hash_buckets,
    "schema": schema.to_dict() if schema else None,
  }
  if cfg.split_by != "hash":  # only then: the key of every dataset split by hash stays
    options["split_by"] = cfg.split_by
  return options


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


def constant_warning(names: list[str]) -> str:
  """The preparation summary's warning about constant columns."""
  return (
    f"column(s) {names} hold the same value in every training row, so they carry "
    "no information (and enter every interaction); drop them, or list them under the "
    "schema's 'ignore'"
  )
