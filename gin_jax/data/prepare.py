"""Raw files -> a cached, compact on-disk dataset, in two streaming passes.

Pass 1 reads the text once, in chunks of whole lines parsed by workers (threads of
this process, or worker processes past prepare.THREADS_UP_TO: module workers): it
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
(synthetic.write_demo_input) and prepares that file.

Every format-specific step (finding a file's layout, reading it in chunks, parsing a
chunk) goes through the input's Format (module formats).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm import tqdm

from gin_jax.config import DataConfig
from gin_jax.data import formats, split_files, synthetic, text, vocab
from gin_jax.data import workers as workers_lib
from gin_jax.data.encode import Encoder
from gin_jax.data.errors import BadRowPolicy, BadRowReport, DataError, write_error
from gin_jax.data.formats import CsvSchema, Format, Layout
from gin_jax.data.formats.base import key_names, list_names
from gin_jax.data.meta import DatasetMeta, FieldSpec, Split, load_split
from gin_jax.data.spill import Spill, ordered_map
from gin_jax.data.workers import assign_splits  # noqa: F401 (re-exported)

SPLITS = ("train", "valid", "test")
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
    _build_once(
      out_dir,
      cache_dir,
      lambda tmp_dir: _Builder(
        cfg, fmt, schema, options, inputs, progress, workers, spill_memory, base
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


@dataclasses.dataclass
class _Stats:
  rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3, np.int64))
  positives: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
  values_not_one: bool = False
  truncated: dict = dataclasses.field(default_factory=dict)  # multi_valued: rows cut


class _Builder:
  """Runs the two passes for one prepare() call."""

  def __init__(
    self, cfg: DataConfig, fmt: Format, schema, options, inputs, progress, workers, spill_memory,
    base: DatasetMeta | None = None,
  ):  # fmt: skip
    self.cfg, self.fmt, self.schema, self.options = cfg, fmt, schema, options
    self.inputs, self.progress, self.workers = inputs, progress, workers
    self.spill_memory, self.base = spill_memory, base
    self.ratios = tuple(options["split"])
    train_layout = fmt.detect_layout(inputs[0]["path"], schema, has_labels=True)
    self.layouts = [train_layout] + [
      fmt.detect_layout(
        i["path"],
        schema,
        True,
        num_fields=len(train_layout.columns),
        train_header=train_layout.header or None,
      )
      for i in inputs[1:]
    ]
    cols = train_layout.columns
    for layout, i in zip(self.layouts[1:], inputs[1:]):
      if [(c.name, c.kind) for c in layout.columns] != [(c.name, c.kind) for c in cols]:
        raise DataError(f"{i['path']}: columns differ from the training file's")
    if base is not None:
      have = [(c.name, c.kind) for c in cols]
      want = [(f.name, f.kind) for f in base.fields]
      if have != want:
        raise DataError(
          f"{inputs[0]['path']}: its columns {[n for n, _ in have]} are not those of the run "
          f"being continued ({[n for n, _ in want]}, kinds included)"
        )
    hashing = cfg.hash_buckets > 0
    self.counted = [
      c
      for c in cols
      if (c.keyed and not hashing) or (c.kind == "numeric" and cfg.numeric == "bucketize")
    ]

  def build(self, out_dir: str) -> DatasetMeta:
    """Runs both passes, writing the splits under out_dir; returns the metadata.

    With worker processes (module workers), the worker that parses a chunk in pass 1
    keeps it (up to spill_memory over all workers; beyond, in a part file under
    out_dir/parts) and encodes it into the splits' files in pass 2; else this
    process parses and encodes in threads through a Spill.
    """
    os.makedirs(out_dir, exist_ok=True)
    size = sum(int(i["size"]) for i in self.inputs)
    self.processes = self.workers > THREADS_UP_TO and size >= PROCESS_MIN_BYTES
    # processes: (Parsed.part, rows per split, Parsed.holder) of every chunk
    self.parts: list[tuple[str, np.ndarray, int | None]] = []
    spill = Spill(os.path.join(out_dir, "spill.bin"), self.spill_memory)
    self.spill_dir = os.path.join(out_dir, "parts") if self.processes else None
    if self.spill_dir:
      os.makedirs(self.spill_dir)
    pool = workers_lib.ProcessPool(self.workers) if self.processes else None
    try:
      with pool or contextlib.nullcontext():
        meta, rows = self._pass1(spill, pool)
        self._pass2(out_dir, meta, rows, spill, pool)
    except workers_lib.WorkerDied as e:
      raise workers_lib.WorkerDied(
        f"{e}, preparing {self.inputs[0]['path']} (killed, or out of memory?); with less "
        "memory, use fewer workers (--data.prepare_workers=N; 1 prepares in this process)"
      ) from None
    if self.processes:
      shutil.rmtree(self.spill_dir, ignore_errors=True)
    return meta

  def _pass1(self, spill: Spill, pool) -> tuple[DatasetMeta, np.ndarray]:
    """Parses and validates every input once, splits, counts and spills the rows.

    Returns:
      (the metadata, int64 [3] rows per split).
    """
    counters = {c.name: vocab.KeyCounter() for c in self.counted}
    missing = dict.fromkeys(counters, 0)  # Training rows where the column is empty.
    stats = _Stats()
    reports = {}
    for index, (inp, layout) in enumerate(zip(self.inputs, self.layouts)):
      reports[inp["path"]] = self._read_input(
        index, inp, layout, pool, counters, missing, stats, spill
      )
    if stats.rows[0] == 0:
      raise DataError(f"{self.inputs[0]['path']}: no rows for the training split")
    meta = self._meta(counters, stats, reports, _constant_columns(counters, missing))
    return meta, stats.rows

  def _read_input(
    self, index: int, inp, layout: Layout, pool, counters, missing, stats, spill
  ) -> BadRowReport:
    """Pass 1 over one input: adds to counters, missing, stats and spill (or parts)."""
    policy = BadRowPolicy(self.cfg.bad_rows, inp["path"])
    for parsed in self._parse(index, inp, layout, pool):
      policy.handle(parsed.bad)
      for name, (keys, n, longs, n_missing) in parsed.counts.items():
        counters[name].add_unique(keys, n)
        counters[name].long.update(longs)
        missing[name] += n_missing
      stats.rows += parsed.rows
      stats.positives += parsed.positives
      stats.values_not_one |= parsed.values_not_one
      for name, n in parsed.truncated.items():
        stats.truncated[name] = stats.truncated.get(name, 0) + n
      if parsed.part is not None:
        self.parts.append((parsed.part, parsed.rows, parsed.holder))
      else:
        spill.append(parsed.raw, parsed.split)
    if policy.report.count:
      _log.warning("%s: %s", inp["path"], policy.report.summary())
    return policy.report

  def _parse(self, index: int, inp, layout: Layout, pool):
    """Parses the chunks of input `index` in order: in `pool`'s processes, or threads.

    Yields a workers.Parsed per chunk.
    """
    task = workers_lib.ParseTask(
      fmt=self.fmt,
      layout=layout,
      ratios=self.ratios,
      seed=self.cfg.seed,
      fixed=SPLITS.index(inp["role"]) if inp["role"] != "train" else None,
      bucketize=self.cfg.numeric == "bucketize",
      counted=tuple(self.counted),
      spill_dir=self.spill_dir,
      input_index=index,
      hold_bytes=self.spill_memory // max(self.workers, 1),
    )
    name = os.path.basename(inp["path"].rstrip(os.sep)) or inp["path"]
    with self._bar(inp["size"], f"pass 1/2 parsing {name}", "B") as bar:
      chunks = self.fmt.iter_chunks(inp["path"], layout, on_progress=bar.update)
      yield from ordered_map(task, enumerate(chunks), self.workers, pool)

  def _pass2(self, out_dir: str, meta: DatasetMeta, rows: np.ndarray, spill: Spill, pool) -> None:
    """Encodes the parsed chunks and writes the splits' arrays."""
    arrays = split_files.allocate(out_dir, SPLITS, rows, meta.num_slots, meta.has_values)
    filled = np.zeros(3, np.int64)
    encoder = Encoder(meta)
    columns = self.layouts[0].columns
    cat, num = key_names(columns), tuple(c.name for c in columns if c.kind == "numeric")
    lists = list_names(columns)
    with self._bar(int(rows.sum()), "pass 2/2 encoding", "rows") as bar:
      if self.processes:
        encoding = workers_lib.Encoding(encoder, [], cat, num, lists)
        self._encode_parts(pool, out_dir, encoding, arrays, filled, bar)
      else:  # each thread writes its chunk's rows at the chunk's offsets
        chunks = _with_offsets(spill.chunks(cat, num, lists))
        write = lambda c: workers_lib.encode_and_write(encoder, arrays, *c)  # noqa: E731
        for written in ordered_map(write, chunks, self.workers):
          bar.update(int(written.sum()))
          filled += written
    if (filled != rows).any():
      raise RuntimeError(f"pass 2 wrote {filled} rows, pass 1 counted {rows}")
    for out in arrays:
      for arr in out.values():
        arr.flush()

  def _encode_parts(self, pool, out_dir: str, encoding, arrays, filled, bar) -> None:
    """Pass 2 in worker processes: each part file encoded into the splits at its offset."""
    tasks, holders, offsets = [], {}, np.zeros(3, np.int64)
    for part, rows, holder in self.parts:
      tasks.append((part, offsets.copy()))
      holders[part] = holder  # a chunk held in a worker's memory is encoded there
      offsets += rows
    encoding.files = [
      {k: os.path.join(out_dir, s, k + ".npy") for k in out} for s, out in zip(SPLITS, arrays)
    ]
    pool.set_context(encoding)
    route = lambda task: holders[task[0]]  # noqa: E731
    for written in ordered_map(workers_lib.encode_part, tasks, self.workers, pool, route):
      bar.update(int(written.sum()))
      filled += written

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

  def _meta(self, counters, stats: _Stats, reports, constant: list[str]) -> DatasetMeta:
    cfg, fields, vocabs, offset, growth = self.cfg, [], {}, 0, {}
    for col in self.layouts[0].columns:
      if col.keyed and cfg.hash_buckets > 0:
        transform, size = "hash", 2 + cfg.hash_buckets
      elif col.keyed:
        tokens = [t.decode("utf-8") for t in counters[col.name].vocabulary(cfg.min_count)]
        vocabs[col.name] = self._grown(col.name, tokens, counters[col.name], growth)
        transform, size = "vocab", 2 + len(vocabs[col.name])
      elif cfg.numeric == "bucketize":
        numbers = counters[col.name].numbers(cfg.min_count)
        vocabs[col.name] = self._grown(col.name, numbers, counters[col.name], growth, True)
        transform, size = "bucketize", 2 + len(vocabs[col.name])
      else:
        transform, size = "scale", 2
      multi = {"max_values": col.max_values, "pooling": col.pooling} if col.pooling else {}
      fields.append(FieldSpec(col.name, col.kind, transform, offset, size, **multi))
      offset += size
    rows = {s: int(n) for s, n in zip(SPLITS, stats.rows)}
    rate = {
      s: (float(p / n) if n else None) for s, p, n in zip(SPLITS, stats.positives, stats.rows)
    }
    has_values = (
      any(f.transform == "scale" or f.kind == "multi_valued" for f in fields)
      or stats.values_not_one
    )
    for name, n in stats.truncated.items():
      if n:
        _log.warning("%s: %d row(s) hold more values than max_values; kept the last", name, n)
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
      truncated_rows={name: int(n) for name, n in stats.truncated.items()},
      base=self.base.fingerprint() if self.base is not None else None,
      growth=growth,
    )

  def _grown(
    self, name: str, ranked: list, counter: vocab.KeyCounter, growth: dict, numeric=False
  ) -> list:
    """Field `name`'s vocabulary: `ranked` (this split's, min_count cut), or with a base
    the base's grown by the tokens of `ranked` it lacks; records the growth."""
    if self.base is None:
      return ranked
    old = self.base.vocab[name]
    known = set(old)
    added = [t for t in ranked if t not in known]
    if numeric:
      counts = counter.number_counts()
    else:
      counts = {t.decode("utf-8"): c for t, c in counter.token_counts().items()}
    total = sum(counts.values())
    seen_old = sum(c for t, c in counts.items() if t in known)
    seen_added = sum(counts[t] for t in added)
    growth[name] = {
      "old_size": len(old),
      "added": len(added),
      "oov_before": (1 - seen_old / total) if total else 0.0,
      "oov_after": (1 - (seen_old + seen_added) / total) if total else 0.0,
    }
    return old + added


def _with_offsets(chunks):
  """(raw, split, int64 [3] rows of each split before the chunk) of every chunk."""
  offsets = np.zeros(3, np.int64)
  for raw, split in chunks:
    yield raw, split, offsets.copy()
    offsets += np.bincount(split, minlength=3)


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
    f"column(s) {names} hold the same value in every training row, so they carry "
    "no information (and enter every interaction); drop them, or list them under the "
    "schema's 'ignore'"
  )
