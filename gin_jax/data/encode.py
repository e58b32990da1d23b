"""Raw rows -> (ids, values) through a prepared dataset's vocabularies and offsets.

`Encoder` maps parsed chunks to rows of the stacked table (the block layout is
described in meta); `encoder_for(meta)` is a dataset's, built once. `encode_file`,
`iter_encode_file` and `encode_rows` parse and encode new files or in-memory rows for
scoring, through the dataset's Format (module formats); their columns must be the
dataset's fields. `encode_records` encodes columns of values held in memory (a
serving request's JSON) through formats.records and the same Encoder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import weakref
from collections.abc import Iterator

import numpy as np

from gin_jax.config import ATTENTION_MISSING
from gin_jax.data import formats, hashing, text, vocab
from gin_jax.data.errors import BadRowPolicy, BadRowReport, DataError
from gin_jax.data.formats import CsvSchema, Format, Layout, RawChunk, records
from gin_jax.data.formats.base import Column
from gin_jax.data.meta import MISSING, OOV, DatasetMeta, FieldSpec, Split, ones_values

_log = logging.getLogger(__name__)


class Encoder:
  """Turns RawChunks into (ids, values) with a dataset's vocabularies and offsets.

  Built once per dataset (tables from the saved vocabularies), then used by pass 2 of
  prepare and by scoring alike, so that both encode a row identically.
  """

  def __init__(self, meta: DatasetMeta):
    self.num_slots = meta.num_slots
    self.pad_id = meta.pad_id
    hash_buckets = int(meta.options.get("hash_buckets", 0))
    # j: each field's first slot (a multi-valued field has max_values of them).
    starts = np.cumsum([0] + [f.max_values for f in meta.fields])[:-1].tolist()
    fields = list(zip(starts, meta.fields))
    # A field that shares another's rows is encoded with its owner's vocabulary.
    table = lambda f: _CategoricalTable(f, meta.vocab.get(f.shares or f.name), hash_buckets)
    self._cat = [(j, f, table(f)) for j, f in fields if f.kind == "categorical"]
    self._cat_groups = _categorical_groups(self._cat)
    self._cat_names: tuple = ()
    self._cat_cols: list[int] = []
    self._multi = [(j, f, table(f)) for j, f in fields if f.kind == "multi_valued"]
    self._bucket = _BucketTable([(j, f, meta.vocab[f.name]) for j, f in fields
                                 if f.transform == "bucketize"])  # fmt: skip
    self._scale = [(j, f) for j, f in fields if f.transform == "scale"]
    self.records_layout = records_layout(meta)
    self.slots = {f.name: range(j, j + f.max_values) for j, f in fields}  # its ids columns

  def encode(self, raw: RawChunk) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns int32 ids [n, slots] and float32 values [n, slots] (None when all 1.0)."""
    n = len(raw)
    ids = np.empty((n, self.num_slots), np.int32)
    values = None
    if self._scale or self._multi or raw.values is not None:
      values = np.ones((n, self.num_slots), np.float32)
    if self._cat:
      cols = self._columns(raw.cat_names)
      keys = text.select_columns(raw.keys, cols)
      for out, table, k in self._cat_groups:
        ids[:, out] = table(keys[:, k])
      where = {c: (j, table) for c, (j, _, table) in zip(cols, self._cat)}
      for (r, c), tok in raw.long_tokens.items():
        if c in where:  # (a multi-valued field's long values are its own)
          j, table = where[c]
          ids[r, j] = table.encode_long(tok)
      if raw.values is not None:
        values[:, [j for j, _, _ in self._cat]] = text.select_columns(raw.values, cols)
    if self._bucket.fields:
      cols = [raw.num_names.index(f.name) for _, f, _ in self._bucket.fields]
      x = text.select_columns(raw.numbers, cols)
      ids[:, self._bucket.out] = self._bucket.encode(x if raw.bucketized else vocab.bucketize(x))
    for j, f in self._scale:
      x = raw.numbers_of(f.name)
      missing = np.isnan(x)
      ids[:, j] = np.where(missing, f.offset + MISSING, f.offset + OOV)
      values[:, j] = np.where(missing, np.float32(1.0), vocab.scale(np.where(missing, 0.0, x)))
    for j, f, table in self._multi:
      self._lists(raw, f, table, ids[:, j : j + f.max_values], values[:, j : j + f.max_values])
    return ids, values

  def _columns(self, cat_names: tuple) -> list[int]:
    """The key columns of the categorical fields in a chunk with these key columns."""
    if cat_names != self._cat_names:
      self._cat_cols = [cat_names.index(f.name) for _, f, _ in self._cat]
      self._cat_names = cat_names
    return self._cat_cols

  def _lists(self, raw: RawChunk, f: FieldSpec, table, ids, values) -> None:
    """Fills ids and values [n, max_values], a multi-valued field's slots.

    A value's id is its category's (OOV when unseen), weighing 1/count (mean) or 1
    (sum); an empty slot gets the pad id (past the real rows) and weight 0; an empty
    list is the field's missing id in slot 0 with weight 1, as an empty field.

    pooling "attention": the model weighs each value against the target's vector, so
    a value's slot holds 1 (a mask, not a weight) and an empty list's missing id
    holds ATTENTION_MISSING: the model passes that slot through with weight 1 (the
    field's missing vector, as an empty field's) instead of attending to it.
    """
    lv = raw.lists[f.name]
    flat = table.encode(lv.keys)
    for i, tok in lv.long_tokens.items():
      flat[i] = table.encode_long(tok)
    lengths = lv.lengths
    row = np.repeat(np.arange(len(lengths)), lengths)  # of each value
    slot = np.arange(len(lv.keys)) - np.repeat(lv.offsets[:-1], lengths)
    empty = lengths == 0
    weight = 1.0 / np.maximum(lengths, 1) if f.pooling == "mean" else np.ones(len(lengths))
    ids[:] = self.pad_id
    ids[row, slot] = flat
    ids[empty, 0] = table.encode(np.array([text.MISSING_KEY]))[0]  # the missing id
    values[:] = 0.0
    values[row, slot] = weight[row]
    values[empty, 0] = ATTENTION_MISSING if f.pooling == "attention" else 1.0


def _categorical_groups(cat: list) -> list:
  """[(id columns, keys [n, k] -> ids [n, k], key columns)]: the vocabulary fields in one
  stacked lookup, the hashed fields in one vectorised hash (the same ids as field by
  field, _CategoricalTable.encode). Plain objects, not closures: worker processes get
  the Encoder pickled."""
  groups = []
  by_vocab = [k for k, (_, f, _) in enumerate(cat) if f.transform == "vocab"]
  if by_vocab:
    fields = [cat[k] for k in by_vocab]
    groups.append(([j for j, _, _ in fields], _VocabGroup(fields), by_vocab))
  hashed = [k for k, (_, f, _) in enumerate(cat) if f.transform != "vocab"]
  if hashed:
    fields = [cat[k] for k in hashed]
    groups.append(([j for j, _, _ in fields], _HashGroup(fields), hashed))
  return groups


class _VocabGroup:
  """Keys of several vocabulary fields -> their ids, in one stacked lookup."""

  def __init__(self, fields: list):
    self._index = vocab.StackedKeyIndex([table._index for _, _, table in fields])
    self._oov = np.array([f.offset + OOV for _, f, _ in fields], np.int32)

  def __call__(self, keys: np.ndarray) -> np.ndarray:
    return self._index.lookup(keys, self._oov)


class _HashGroup:
  """Keys of several hashed fields -> their ids, hashed at once."""

  def __init__(self, fields: list):
    self._buckets = np.array([table.hash_buckets for _, _, table in fields], np.uint64)
    self._first = np.array([f.offset + 2 for _, f, _ in fields], np.int64)
    self._missing = np.array([f.offset + MISSING for _, f, _ in fields], np.int64)

  def __call__(self, keys: np.ndarray) -> np.ndarray:
    ids = (hashing.hash_keys(keys) % self._buckets).astype(np.int64) + self._first
    return np.where(keys == text.MISSING_KEY, self._missing, ids).astype(np.int32)


class _CategoricalTable:
  """Token keys of one categorical field -> global ids (vocabulary or stable hash)."""

  def __init__(self, spec: FieldSpec, tokens: list | None, hash_buckets: int):
    self.spec = spec
    self.hash_buckets = hash_buckets
    if spec.transform == "vocab":
      encoded = [t.encode("utf-8") for t in tokens]
      short = [i for i, t in enumerate(encoded) if len(t) <= 8]
      # The missing key (0, the empty token) goes into the table too: one lookup.
      keys = np.append(text.bytes_to_keys([encoded[i] for i in short]), text.MISSING_KEY)
      ids = np.append(np.array(short, np.int64) + spec.offset + 2, spec.offset + MISSING)
      self._index = vocab.KeyIndex(keys, ids)
      self._long = {t: spec.offset + 2 + i for i, t in enumerate(encoded) if len(t) > 8}

  def encode(self, keys: np.ndarray) -> np.ndarray:
    s = self.spec
    if s.transform == "vocab":
      return self._index.lookup(keys, s.offset + OOV)
    ids = (hashing.hash_keys(keys) % np.uint64(self.hash_buckets)).astype(np.int32)
    ids += s.offset + 2
    ids[keys == text.MISSING_KEY] = s.offset + MISSING
    return ids

  def encode_long(self, token: bytes) -> int:
    s = self.spec
    if s.transform == "vocab":
      return self._long.get(token, s.offset + OOV)
    return s.offset + 2 + hashing.hash_token(token) % self.hash_buckets


class _BucketTable:
  """Bucket values of all bucketized fields -> global ids, through one dense table.

  Bucket values are small integers (x <= 2, or floor(ln(x)^2) <= ~500), so a table
  indexed by value beats hashing. Each field's block of the table covers its
  vocabulary's [lo, hi] and ends with its OOV and missing ids.
  """

  def __init__(self, fields: list[tuple[int, FieldSpec, list]]):
    self.fields = fields
    self.out = [j for j, _, _ in fields]
    blocks, los, spans, bases, base = [], [], [], [], 0
    for _, f, tokens in fields:
      buckets = np.array(tokens, np.float64)
      lo = buckets.min() if len(buckets) else 0.0
      span = int(buckets.max() - lo) + 1 if len(buckets) else 0
      if span > 1 << 20:
        raise ValueError(f"{f.name}: bucket values span {span}; not a bucketized field?")
      block = np.full(span + 2, f.offset + OOV, np.int32)
      block[(buckets - lo).astype(np.int64)] = f.offset + 2 + np.arange(len(buckets))
      block[-1] = f.offset + MISSING
      blocks.append(block)
      los.append(lo)
      spans.append(span)
      bases.append(base)
      base += span + 2
    self._table = np.concatenate(blocks) if blocks else np.zeros(0, np.int32)
    self._lo = np.array(los, np.float64)
    self._span = np.array(spans, np.float64)
    self._base = np.array(bases, np.int64)

  def encode(self, buckets: np.ndarray) -> np.ndarray:
    """int32 [n, len(fields)] ids of float64 bucket values (NaN = missing)."""
    slot = buckets - self._lo
    slot = np.where((slot >= 0) & (slot < self._span), slot, self._span)  # Else OOV.
    slot = np.where(np.isnan(buckets), self._span + 1, slot)  # NaN compares False above.
    return self._table[slot.astype(np.int64) + self._base]


# Encoders by id(meta), each with a weak reference to its meta: an entry goes when its
# meta does (an Encoder holds no reference to its meta).
_ENCODERS: dict[int, tuple[weakref.ref, Encoder]] = {}


def encoder_for(meta: DatasetMeta) -> Encoder:
  """The Encoder of a dataset, built on first use and kept while `meta` lives.

  Building one turns every vocabulary into lookup tables, so scoring calls on the
  same metadata (encode_rows in a loop, one file after another) share it.
  """
  key = id(meta)
  cached = _ENCODERS.get(key)
  if cached is not None and cached[0]() is meta:
    return cached[1]
  encoder = Encoder(meta)
  _ENCODERS[key] = (weakref.ref(meta, lambda _: _ENCODERS.pop(key, None)), encoder)
  return encoder


# ------------------------------------------------------------------ scoring


def records_layout(meta: DatasetMeta) -> Layout:
  """The layout of in-memory records of a dataset (formats.records): one column a field."""
  separators = {}
  if meta.schema is not None:
    separators = {m.name: m.separator for m in CsvSchema.from_dict(meta.schema).multi_valued}
  columns = tuple(
    Column(f.name, f.kind, j, separator=separators.get(f.name, ""), max_values=f.max_values,
           pooling=f.pooling)
    for j, f in enumerate(meta.fields)
  )  # fmt: skip
  return Layout(meta.format, b"", (), None, columns)


def encode_records(
  meta: DatasetMeta, columns, rows: int, context=None
) -> tuple[Split, dict[int, str]]:
  """Encodes records held in memory, column by column, as their file's rows would be.

  Args:
    meta: the training dataset's metadata.
    columns: field name -> its `rows` raw values (str, int, float, bool, None, lists;
      see formats.records for what each field kind takes); a field absent, or None,
      is missing in every record.
    rows: the number of records.
    context: field name -> one raw value that every record holds (one user, many
      candidates): encoded once and repeated, the same ids and values as if each
      record held it.

  Returns:
    (a Split of all `rows` records, line_numbers 0..rows-1 and labels NaN;
    {row: reason} of the records with a bad value, their ids not to be used; a bad
    context value is row -1).
  """
  encoder = encoder_for(meta)
  layout = encoder.records_layout
  context = context or {}
  given = {c.name: None if c.name in context else columns.get(c.name) for c in layout.columns}
  raw, bad = records.parse_records(given, rows, layout)
  ids, values = encoder.encode(raw)
  if context:
    once = {c.name: [context[c.name]] if c.name in context else None for c in layout.columns}
    raw_once, bad_once = records.parse_records(once, 1, layout)
    if bad_once:
      bad = {-1: bad_once[0], **bad}
    ids_once, values_once = encoder.encode(raw_once)
    slots = [k for name in context for k in encoder.slots[name]]
    ids[:, slots] = ids_once[0, slots]
    if values_once is not None:
      values = np.ones(ids.shape, np.float32) if values is None else values
      values[:, slots] = values_once[0, slots]
  return Split(ids, _values_or_ones(values, ids.shape), raw.labels, raw.lines), bad


def _scoring_layout(
  meta: DatasetMeta, path: str, fmt_name: str | None, schema, has_labels: bool | None
) -> tuple[Format, Layout]:
  if isinstance(schema, str | os.PathLike):
    schema = CsvSchema.load(schema)
  elif isinstance(schema, dict):
    schema = CsvSchema.from_dict(schema)
  elif schema is None and meta.schema is not None:
    schema = CsvSchema.from_dict(meta.schema)
  if schema is not None and schema.multi_valued:
    schema = _with_dataset_slots(schema, meta)
  fmt = formats.get(fmt_name or meta.format)
  layout = fmt.detect_layout(
    path, schema, has_labels, num_fields=meta.num_fields, train_header=meta.columns
  )
  _check_columns(meta, layout, path)
  return fmt, layout


def _with_dataset_slots(schema: CsvSchema, meta: DatasetMeta) -> CsvSchema:
  """A scoring schema whose lists keep as many values as the dataset's fields do."""
  slots = {f.name: f.max_values for f in meta.fields if f.kind == "multi_valued"}
  multi = tuple(
    dataclasses.replace(m, max_values=slots.get(m.name, m.max_values)) for m in schema.multi_valued
  )
  return dataclasses.replace(schema, multi_valued=multi)


def _check_columns(meta: DatasetMeta, layout: Layout, where: str) -> None:
  have = {c.name: c.kind for c in layout.columns}
  want = {f.name: f.kind for f in meta.fields}
  if have != want:
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    kinds = sorted(n for n in set(have) & set(want) if have[n] != want[n])
    raise DataError(
      f"{where}: columns do not match the dataset's fields "
      f"(missing {missing}, unexpected {extra}, other kind {kinds})"
    )


def iter_encode_file(
  meta: DatasetMeta,
  path: str | os.PathLike,
  fmt: str | None = None,
  schema=None,
  bad_rows: str = "error",
  has_labels: bool | None = None,
  report: BadRowReport | None = None,
  chunk_bytes: int | None = None,
) -> Iterator[Split]:
  """Streaming encode_file: yields one Split per chunk (~30k rows), in file order.

  Args: as encode_file; `report` (if given) collects the rows skipped;
    `chunk_bytes`: text per chunk (default text.CHUNK_BYTES, 8 MiB).

  Returns:
    An iterator of in-memory Splits with line_numbers filled.
  """
  path = str(path)
  fmt, layout = _scoring_layout(meta, path, fmt, schema, has_labels)
  policy = BadRowPolicy(bad_rows, path)
  if report is not None:
    policy.report = report
  encoder = encoder_for(meta)
  for chunk in fmt.iter_chunks(path, layout, chunk_bytes=chunk_bytes):
    raw, bad = fmt.parse_chunk(chunk, layout)
    policy.handle(bad)
    ids, values = encoder.encode(raw)
    yield Split(ids, _values_or_ones(values, ids.shape), raw.labels, raw.lines)


def encode_file(
  meta: DatasetMeta,
  path: str | os.PathLike,
  fmt: str | None = None,
  schema=None,
  bad_rows: str = "error",
  has_labels: bool | None = None,
) -> tuple[Split, BadRowReport]:
  """Encodes a raw file with a dataset's saved vocabularies (for scoring).

  Unseen categories map to their field's OOV row, empty fields to its missing row.

  Args:
    meta: the training dataset's metadata.
    path: the file (plain or gzip).
    fmt: its format (default: the dataset's). Its columns must be the dataset's fields.
    schema: csv: CsvSchema, dict or schema file (default: the dataset's schema).
    bad_rows: "error" (raise DataError at the first bad row) or "skip".
    has_labels: None: decide from the file (criteo: 40 vs 39 fields; csv: label column
      present; libfm: first token without ':'). Unlabeled rows get label NaN.

  Returns:
    (the rows in file order with line_numbers, the report of skipped rows).
  """
  report = BadRowReport()
  parts = list(iter_encode_file(meta, path, fmt, schema, bad_rows, has_labels, report))
  return concat_splits(parts, meta.num_slots), report


def encode_rows(
  meta: DatasetMeta,
  rows: list[str],
  *,
  has_labels: bool | None = None,
  bad_rows: str = "error",
  header: list[str] | None = None,
) -> Split:
  """Encodes raw lines held in memory, like encode_file (Python scoring API).

  Args:
    meta: the training dataset's metadata.
    rows: raw lines of the dataset's format (a trailing newline is allowed); for csv,
      data lines only, in the column order `header` (default: the training file's
      header, without the label column when the rows have one field fewer).
    has_labels: None: decide from the first row (see encode_file).
    bad_rows: "error" raises DataError "<rows>:k: reason" (k is 1-based); "skip" drops
      bad rows and logs how many (line_numbers tell which rows were kept).
    header: csv column names of `rows`.

  Returns:
    A Split whose line_numbers are 1-based indices into `rows`.
  """
  fmt = formats.get(meta.format)
  chunk = fmt.rows_chunk(rows)
  if chunk is None:
    return concat_splits([], meta.num_slots)
  schema = CsvSchema.from_dict(meta.schema) if meta.schema is not None else None
  layout = fmt.rows_layout(
    chunk,
    schema,
    has_labels,
    num_fields=meta.num_fields,
    train_header=meta.columns,  # csv: the training file's header, label included.
    header=header,
    path="<rows>",
  )
  _check_columns(meta, layout, "<rows>")
  raw, bad = fmt.parse_chunk(chunk, layout)
  policy = BadRowPolicy(bad_rows, "<rows>")
  policy.handle(bad)
  if policy.report.count:
    _log.warning("%s", policy.report.summary())
  ids, values = encoder_for(meta).encode(raw)
  return Split(ids, _values_or_ones(values, ids.shape), raw.labels, raw.lines)


def _values_or_ones(values: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
  return ones_values(*shape) if values is None else values


def concat_splits(parts: list[Split], num_fields: int) -> Split:
  """One in-memory Split of the parts, in order."""
  if not parts:
    return Split(
      np.zeros((0, num_fields), np.int32),
      ones_values(0, num_fields),
      np.zeros(0, np.float32),
      np.zeros(0, np.int64),
    )
  ids = np.concatenate([p.ids for p in parts])
  if all(p.values_are_ones for p in parts):
    values = ones_values(*ids.shape)
  else:
    values = np.concatenate([p.values for p in parts])
  labels = np.concatenate([p.labels for p in parts])
  return Split(ids, values, labels, np.concatenate([p.line_numbers for p in parts]))
