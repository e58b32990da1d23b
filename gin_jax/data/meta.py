"""What a prepared dataset is: field specs, metadata (JSON), splits, and the encoder.

The model sees every example as f (row id, value) pairs into ONE stacked embedding
table: embedding = table[id] * value. Each field owns a contiguous block of rows,
blocks stacked in field order (`FieldSpec.offset`):

  transform   block layout                             id of a row          value
  vocab       [OOV, missing, vocab[0], vocab[1], ...]  by vocabulary        1.0
  hash        [OOV (unused), missing, bucket 0..H-1]   stable hash mod H    1.0
  bucketize   [OOV, missing, vocab of bucket values]   by bucket vocabulary 1.0
  scale       [value, missing]                         value row            sign(x)ln(1+|x|)

A missing scaled value uses the missing row with value 1.0. libfm fields are
`vocab`/`hash` fields whose value is the row's `val` instead of 1.0. Hashing mode
keeps the OOV row so that every categorical block has the same shape.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import numpy as np

from gin_jax.data import text, vocab
from gin_jax.data.formats import RawChunk

META_FILE = "meta.json"
META_VERSION = 1
OOV, MISSING = 0, 1  # Row of the OOV and the missing category within a field's block.


@dataclasses.dataclass(frozen=True)
class FieldSpec:
  """One field of the model's input and its block of the stacked table."""

  name: str  # "I1".."I13","C1".."C26" (criteo); column name (csv); "f0".. (libfm).
  kind: str  # "categorical" | "numeric".
  transform: str  # "vocab" | "hash" | "bucketize" | "scale".
  offset: int  # First row of this field in the stacked table.
  size: int  # Rows of this field (including OOV and missing).


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """Everything needed to read a prepared dataset and to encode new files like it.

  Plain JSON (no pickle): save(dir) writes dir/meta.json, load(dir) reads it.
  """

  format: str  # "criteo" | "csv" | "libfm".
  fields: list[FieldSpec]
  num_table_rows: int  # Sum of the field sizes (not padded for sharding).
  vocab: dict[str, list]  # Per vocab/bucketize field: tokens (str) or buckets (int).
  options: dict[str, Any]  # The DataConfig options the dataset was built with.
  split_rows: dict[str, int]  # Rows per split ("train", "valid", "test").
  positive_rate: dict[str, float]  # Mean label per split (NaN for an empty split).
  skipped_rows: dict[str, dict]  # Per input file: {"count", "examples"} of bad rows.
  inputs: list[dict] = dataclasses.field(default_factory=list)  # Path/size/mtime.
  schema: dict | None = None  # csv: the schema (CsvSchema.to_dict()).
  columns: list[str] | None = None  # csv: the training file's header, in order.
  planted_pairs: list[list[str]] | None = None  # synthetic data: the planted pairs.
  has_values: bool = False  # Whether any split stores values other than 1.0.
  version: int = META_VERSION

  @property
  def field_names(self) -> list[str]:
    return [f.name for f in self.fields]

  @property
  def num_fields(self) -> int:
    return len(self.fields)

  def field(self, name: str) -> FieldSpec:
    return self.fields[self.field_names.index(name)]

  def to_dict(self) -> dict:
    """The metadata as plain data (what meta.json and checkpoints hold)."""
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), allow_nan=False)  # Strict JSON.

  @classmethod
  def from_dict(cls, d: dict) -> DatasetMeta:
    if d.get("version") != META_VERSION:
      raise ValueError(f"unsupported dataset metadata version {d.get('version')}")
    return cls(**{**d, "fields": [FieldSpec(**f) for f in d["fields"]]})

  @classmethod
  def from_json(cls, s: str) -> DatasetMeta:
    return cls.from_dict(json.loads(s))

  def save(self, directory: str | os.PathLike) -> str:
    """Writes directory/meta.json; returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, META_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write(self.to_json())
    os.replace(path + ".tmp", path)
    return path

  @classmethod
  def load(cls, directory: str | os.PathLike) -> DatasetMeta:
    with open(os.path.join(directory, META_FILE), encoding="utf-8") as f:
      return cls.from_json(f.read())

  @functools.cached_property
  def encoder(self) -> Encoder:
    """The (lazily built, cached) encoder of raw rows into this dataset's ids."""
    return Encoder(self)


@dataclasses.dataclass(frozen=True)
class Split:
  """Encoded examples. Arrays may be read-only memory maps.

  `values` of a dataset whose values are all 1.0 is a zero-stride broadcast view
  (it costs no disk and no memory).
  """

  ids: np.ndarray  # int32 [N, f] global row ids into the stacked table.
  values: np.ndarray  # float32 [N, f].
  labels: np.ndarray  # float32 [N] in {0, 1}; NaN for unlabeled input.
  line_numbers: np.ndarray | None  # int64 [N] 1-based source line of each row.

  def __len__(self) -> int:
    return len(self.labels)


def ones_values(num_rows: int, num_fields: int) -> np.ndarray:
  """A read-only float32 [num_rows, num_fields] array of 1.0 that takes no memory."""
  return np.broadcast_to(np.float32(1.0), (num_rows, num_fields))


def load_split(directory: str | os.PathLike) -> Split:
  """Memory-maps a split written by prepare (ids/labels/line_numbers[/values].npy)."""

  def load(name):
    path = os.path.join(directory, name + ".npy")
    if not os.path.exists(path):
      return None
    arr = np.load(path, mmap_mode="r")
    return arr

  ids = load("ids")
  values = load("values")
  if values is None:
    values = ones_values(*ids.shape)
  return Split(ids, values, load("labels"), load("line_numbers"))


# ------------------------------------------------------------------ encoder


class Encoder:
  """Turns RawChunks into (ids, values) with a dataset's vocabularies and offsets.

  Built once per dataset (tables from the saved vocabularies), then used by pass 2 of
  prepare and by scoring alike, so that both encode a row identically.
  """

  def __init__(self, meta: DatasetMeta):
    self.meta = meta
    self.num_fields = meta.num_fields
    hash_buckets = int(meta.options.get("hash_buckets", 0))
    self._cat = [
      (j, f, _CategoricalTable(f, meta.vocab.get(f.name), hash_buckets))
      for j, f in enumerate(meta.fields)
      if f.kind == "categorical"
    ]
    self._bucket = _BucketTable(
      [(j, f, meta.vocab[f.name]) for j, f in enumerate(meta.fields) if f.transform == "bucketize"]
    )
    self._scale = [(j, f) for j, f in enumerate(meta.fields) if f.transform == "scale"]

  def encode(self, raw: RawChunk) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns int32 ids [n, f] and float32 values [n, f] (None when all 1.0)."""
    n = len(raw)
    ids = np.empty((n, self.num_fields), np.int32)
    values = None
    if self._scale or raw.values is not None:
      values = np.ones((n, self.num_fields), np.float32)
    if self._cat:
      cols = [raw.cat_names.index(f.name) for _, f, _ in self._cat]
      keys = _columns(raw.keys, cols)
      for k, (j, _, table) in enumerate(self._cat):
        ids[:, j] = table.encode(keys[:, k])
      where = {c: (j, table) for c, (j, _, table) in zip(cols, self._cat)}
      for (r, c), tok in raw.long_tokens.items():
        j, table = where[c]
        ids[r, j] = table.encode_long(tok)
      if raw.values is not None:
        values[:, [j for j, _, _ in self._cat]] = _columns(raw.values, cols)
    if self._bucket.fields:
      cols = [raw.num_names.index(f.name) for _, f, _ in self._bucket.fields]
      x = _columns(raw.numbers, cols)
      ids[:, self._bucket.out] = self._bucket.encode(x if raw.bucketized else vocab.bucketize(x))
    for j, f in self._scale:
      x = raw.numbers_of(f.name)
      missing = np.isnan(x)
      ids[:, j] = np.where(missing, f.offset + MISSING, f.offset + OOV)
      values[:, j] = np.where(missing, np.float32(1.0), vocab.scale(np.where(missing, 0.0, x)))
    return ids, values


def _columns(arr: np.ndarray, cols: list[int]) -> np.ndarray:
  """arr[:, cols], as a view when the columns are consecutive (the usual case)."""
  if cols == list(range(cols[0], cols[0] + len(cols))):
    return arr[:, cols[0] : cols[0] + len(cols)]
  return arr[:, cols]


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
    ids = (text.hash_keys(keys) % np.uint64(self.hash_buckets)).astype(np.int32)
    ids += s.offset + 2
    ids[keys == text.MISSING_KEY] = s.offset + MISSING
    return ids

  def encode_long(self, token: bytes) -> int:
    s = self.spec
    if s.transform == "vocab":
      return self._long.get(token, s.offset + OOV)
    return s.offset + 2 + text.hash_token(token) % self.hash_buckets


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
