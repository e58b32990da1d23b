"""The two streaming passes of one preparation (module prepare: what, where, once).

Pass 1 reads every input once, in chunks of whole lines parsed by workers (threads
of this process, or worker processes: module workers): it validates rows (a bad row
raises, or is counted and skipped), assigns rows of the training file to splits,
counts the categories of the training split only, and keeps the parsed chunk
(binary keys and numbers, ~0.3 KB per Criteo row) in memory up to a budget and in
a temporary spill file beyond it (with worker processes, the worker that parsed a
chunk keeps it). Between the passes the vocabularies are cut at min_count and the
field blocks laid out (grown from the run being continued, with --init-from).
Pass 2 encodes the parsed chunks and writes ids, labels and source lines straight
into the splits' preallocated .npy files, each chunk at its offsets from pass 1's
counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys

import numpy as np
from tqdm import tqdm

from gin_jax.config import DataConfig
from gin_jax.data import split_files, vocab
from gin_jax.data import workers as workers_lib
from gin_jax.data.encode import Encoder
from gin_jax.data.errors import BadRowPolicy, BadRowReport, DataError
from gin_jax.data.formats import Format, Layout
from gin_jax.data.formats.base import key_names, list_names
from gin_jax.data.meta import DatasetMeta, FieldSpec
from gin_jax.data.spill import Spill, ordered_map

SPLITS = ("train", "valid", "test")
_log = logging.getLogger("gin_jax.data.prepare")  # one logger for a preparation's messages


@dataclasses.dataclass
class _Stats:
  rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3, np.int64))
  positives: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
  values_not_one: bool = False
  truncated: dict = dataclasses.field(default_factory=dict)  # multi_valued: rows cut


class TwoPasses:
  """Runs the two passes for one prepare() call (prepare decides threads or processes)."""

  def __init__(
    self, cfg: DataConfig, fmt: Format, schema, options, inputs, progress, workers, spill_memory,
    base: DatasetMeta | None = None, processes: bool = False,
  ):  # fmt: skip
    self.cfg, self.fmt, self.schema, self.options = cfg, fmt, schema, options
    self.inputs, self.progress, self.workers = inputs, progress, workers
    self.spill_memory, self.base, self.processes = spill_memory, base, processes
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
    train = inp["role"] == "train"
    task = workers_lib.ParseTask(
      fmt=self.fmt,
      layout=layout,
      ratios=self.ratios,
      seed=self.cfg.seed,
      fixed=None if train else SPLITS.index(inp["role"]),
      cuts=self._line_cuts(inp, layout) if train and self.cfg.split_by == "line" else None,
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

  def _line_cuts(self, inp, layout: Layout) -> tuple[int, int]:
    """data.split_by=line: the last line of the train and of the valid split (a read of
    the training input before pass 1, to count its lines)."""
    name = os.path.basename(inp["path"].rstrip(os.sep)) or inp["path"]
    with self._bar(inp["size"], f"counting the lines of {name}", "B") as bar:
      last = self.fmt.last_line(inp["path"], layout, on_progress=bar.update)
    first = layout.header_lines + 1
    if last < first:
      raise DataError(f"{inp['path']}: no rows for the training split")
    return workers_lib.line_cuts(first, last, self.ratios)

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
    cfg, fields, vocabs, offset, growth = self.cfg, {}, {}, 0, {}
    shares = dict(self.schema.share_embedding) if self.schema is not None else {}
    for column, owner in shares.items():  # one vocabulary, counted over both columns
      if column in counters:
        counters[owner].absorb(counters.pop(column))
    columns = self.layouts[0].columns
    for col in columns:
      if col.name in shares:
        continue  # laid out below, on its owner's block
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
      fields[col.name] = FieldSpec(col.name, col.kind, transform, offset, size, **_multi(col))
      offset += size
    for col in columns:
      if col.name in shares:
        owner = fields[shares[col.name]]
        fields[col.name] = FieldSpec(
          col.name, col.kind, owner.transform, owner.offset, owner.size, **_multi(col),
          shares=owner.name,
        )  # fmt: skip
    fields = [fields[col.name] for col in columns]
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


def _multi(col) -> dict:
  """A multi-valued column's FieldSpec keys (none for a single-valued one)."""
  if not col.pooling:
    return {}
  return {"max_values": col.max_values, "pooling": col.pooling, "target": col.target}


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
