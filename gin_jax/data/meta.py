"""What a prepared dataset is: field specs, metadata (JSON) and splits.

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

A field that shares another's rows (schema `share_embedding`, `FieldSpec.shares`)
has no block of its own: its offset, size and transform are its owner's, it is
encoded with the owner's vocabulary (counted over both columns), and its OOV and
missing ids are the owner's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np

from gin_jax import files
from gin_jax.data.errors import DataError
from gin_jax.hints import did_you_mean

META_FILE = "meta.json"
META_VERSION = 1
OOV, MISSING = 0, 1  # Row of the OOV and the missing category within a field's block.


@dataclasses.dataclass(frozen=True)
class FieldSpec:
  """One field of the model's input and its block of the stacked table."""

  name: str  # "I1".."I13","C1".."C26" (criteo); column name (csv); "f0".. (libfm).
  kind: str  # "categorical" | "multi_valued" | "numeric".
  transform: str  # "vocab" | "hash" | "bucketize" | "scale".
  offset: int  # First row of this field in the stacked table.
  size: int  # Rows of this field (including OOV and missing).
  max_values: int = 1  # Slots of the ids / values arrays (multi_valued: values kept per row).
  # multi_valued: "mean" (each value weighs 1/count), "sum" (1 each) or "attention"
  # (weighed against `target`'s vector by the model; see encode.Encoder._lists).
  pooling: str = ""
  target: str = ""  # pooling "attention": the single-valued categorical field attended to.
  shares: str = ""  # share_embedding: the field whose block of rows this one uses.

  def to_dict(self) -> dict:
    """Plain data; the sequence keys only when set (a dataset without them keeps its
    meta.json and fingerprint)."""
    d = dataclasses.asdict(self)
    return {k: v for k, v in d.items() if k not in _SEQUENCE_KEYS or v}


_SEQUENCE_KEYS = ("target", "shares")


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """Everything needed to read a prepared dataset and to encode new files like it.

  Plain JSON (no pickle): save(dir) writes dir/meta.json, load(dir) reads it. The
  encoder of raw rows into its ids is encode.encoder_for(meta).
  """

  format: str  # The input format: a name of gin_jax.config.FORMATS.
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
  constant_fields: list[str] = dataclasses.field(default_factory=list)  # Same value in all rows.
  # multi_valued fields: rows whose list was longer than max_values (the last kept).
  truncated_rows: dict[str, int] = dataclasses.field(default_factory=dict)
  # --init-from: the dataset this one grew from (`fingerprint()` of it), and per
  # field {"old_size", "added", "oov_before", "oov_after"} (prepare.grow_vocabularies).
  base: str | None = None
  growth: dict[str, dict] = dataclasses.field(default_factory=dict)
  version: int = META_VERSION

  @property
  def field_names(self) -> list[str]:
    return [f.name for f in self.fields]

  @property
  def num_fields(self) -> int:
    return len(self.fields)

  @property
  def field_slots(self) -> tuple[int, ...] | None:
    """Slots per field (models.ModelSpec.field_slots); None: one per field, no lists."""
    slots = tuple(f.max_values for f in self.fields)
    return None if all(k == 1 for k in slots) else slots

  @property
  def attention(self) -> tuple[tuple[int, int], ...]:
    """(field, target field) indices of the attention-pooled fields (models.ModelSpec)."""
    names = self.field_names
    return tuple(
      (i, names.index(f.target)) for i, f in enumerate(self.fields) if f.pooling == "attention"
    )

  @property
  def num_slots(self) -> int:
    """The width of the prepared ids and values arrays."""
    return sum(f.max_values for f in self.fields)

  @property
  def pad_id(self) -> int:
    """The id of a multi-valued field's empty slots: one past the table's real rows."""
    return self.num_table_rows

  def field(self, name: str) -> FieldSpec:
    return self.fields[self.field_names.index(name)]

  def group_column(self, name: str) -> int:
    """The column of the prepared ids that says each row's group of field `name`, for a
    grouped AUC (train.group_by, `gin_jax.score --group-by`).

    A category's id is its group: rows whose value is below data.min_count (the
    OOV id) or missing form a group each. Raises DataError for a name that is
    not a field, a multi-valued field (no one group a row) and a scaled numeric
    field (one id for every value).
    """
    where = f"--group-by {name}"
    if name not in self.field_names:
      shown = ", ".join(self.field_names[:8]) + (", ..." if len(self.field_names) > 8 else "")
      raise DataError(
        f"{where}: not a field of the data ({shown}){did_you_mean(name, self.field_names)}"
      )
    index = self.field_names.index(name)
    spec = self.fields[index]
    if spec.max_values > 1:
      raise DataError(f"{where}: a multi-valued field, with no one group a row")
    if spec.transform == "scale":
      raise DataError(
        f"{where}: a numeric field read as a value (data.numeric=scale), not as a category"
      )
    return sum(f.max_values for f in self.fields[:index])

  def fingerprint(self) -> str:
    """SHA-256 (16 hex digits) of what encodes rows: fields, vocabularies, encoding options."""
    what = [f.to_dict() for f in self.fields], self.vocab, self.options
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

  def to_dict(self) -> dict:
    """The metadata as plain data (what meta.json and checkpoints hold)."""
    return {**dataclasses.asdict(self), "fields": [f.to_dict() for f in self.fields]}

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), allow_nan=False)  # Strict JSON.

  @classmethod
  def from_dict(cls, d: dict) -> DatasetMeta:
    """Metadata from plain data, checked (see `check`); raises DataError naming the problem."""
    if not isinstance(d, dict):
      raise DataError(f"dataset metadata must be a JSON object, got {type(d).__name__}")
    if d.get("version") != META_VERSION:
      raise DataError(f"unsupported dataset metadata version {d.get('version')!r}")
    _check_keys(cls, d, "dataset metadata")
    fields = d["fields"]
    if not isinstance(fields, list) or not all(isinstance(f, dict) for f in fields):
      raise DataError("dataset metadata: 'fields' must be a list of objects")
    for f in fields:
      _check_keys(FieldSpec, f, f"field {f.get('name')!r}")
    meta = cls(**{**d, "fields": [FieldSpec(**f) for f in fields]})
    meta.check()
    return meta

  def check(self) -> None:
    """Raises DataError unless the field blocks tile the table exactly.

    Every field's block must start where the previous one ends, have the size
    its transform and vocabulary imply, and the blocks must add up to
    num_table_rows: otherwise encoded ids would point outside the table (or
    into another field's rows) and score as garbage or NaN.
    """
    offset = 0
    hash_buckets = int(self.options.get("hash_buckets", 0) or 0)
    for f in self.fields:
      if f.shares:
        continue  # checked below, against its owner
      if f.transform in ("vocab", "bucketize"):
        if not isinstance(self.vocab.get(f.name), list):
          raise DataError(f"field {f.name!r}: no vocabulary")
        size = 2 + len(self.vocab[f.name])
      elif f.transform == "hash":
        size = 2 + hash_buckets
      elif f.transform == "scale":
        size = 2
      else:
        raise DataError(f"field {f.name!r}: unknown transform {f.transform!r}")
      if f.offset != offset or f.size != size:
        raise DataError(
          f"field {f.name!r}: rows [{f.offset}, {f.offset + f.size}) of the table, "
          f"expected [{offset}, {offset + size}) from the fields before it and its "
          f"{f.transform} transform"
        )
      offset += size
    if offset != self.num_table_rows:
      raise DataError(
        f"the fields cover {offset} table rows, not num_table_rows={self.num_table_rows}"
      )
    self._check_sequences()

  def _check_sequences(self) -> None:
    """Raises DataError unless every shared field has its owner's block and encoding and
    every attention target is a single-valued categorical field."""
    by_name = {f.name: f for f in self.fields}
    for f in self.fields:
      owner = by_name.get(f.shares)
      if f.shares and (owner is None or owner.shares or owner.kind == "numeric"):
        raise DataError(f"field {f.name!r}: shares the rows of {f.shares!r}, not a field with rows")
      if f.shares and f.transform != owner.transform:
        raise DataError(
          f"field {f.name!r} shares the rows of {owner.name!r} but is encoded by "
          f"{f.transform}, {owner.name!r} by {owner.transform}: a shared pair has one encoding"
        )
      if f.shares and (f.offset, f.size) != (owner.offset, owner.size):
        raise DataError(
          f"field {f.name!r}: rows [{f.offset}, {f.offset + f.size}), not those of "
          f"{owner.name!r} whose rows it shares"
        )
      if f.shares and f.name in self.vocab:
        raise DataError(
          f"field {f.name!r}: a vocabulary of its own, yet it shares {owner.name!r}'s"
        )
      target = by_name.get(f.target)
      if (f.pooling == "attention") != bool(f.target) or (
        f.target and (target is None or target.kind != "categorical")
      ):
        raise DataError(
          f"field {f.name!r}: attention pooling needs a single-valued categorical target, "
          f"got {f.target!r}"
        )

  @classmethod
  def from_json(cls, s: str) -> DatasetMeta:
    try:
      d = json.loads(s)
    except ValueError as e:
      raise DataError(f"dataset metadata is not valid JSON ({e})") from None
    return cls.from_dict(d)

  def save(self, directory: str | os.PathLike) -> str:
    """Writes directory/meta.json; returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, META_FILE)
    files.atomic_write(path, self.to_json())
    return path

  @classmethod
  def load(cls, directory: str | os.PathLike) -> DatasetMeta:
    path = os.path.join(directory, META_FILE)
    with open(path, encoding="utf-8") as f:
      text = f.read()
    try:
      return cls.from_json(text)
    except DataError as e:
      raise DataError(f"{path}: {e}") from None


def _check_keys(cls, d: dict, what: str) -> None:
  known = {f.name for f in dataclasses.fields(cls)}
  required = {
    f.name
    for f in dataclasses.fields(cls)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
  }
  unknown, missing = sorted(set(d) - known), sorted(required - set(d))
  if unknown:
    raise DataError(f"{what}: unknown key(s) {unknown}")
  if missing:
    raise DataError(f"{what}: missing key(s) {missing}")


@dataclasses.dataclass(frozen=True)
class Split:
  """Encoded examples. Arrays may be read-only memory maps.

  `values` of a dataset whose values are all 1.0 is a zero-stride broadcast view
  (it costs no disk and no memory); `values_are_ones` tells it apart.
  """

  ids: np.ndarray  # int32 [N, f] global row ids into the stacked table.
  values: np.ndarray  # float32 [N, f].
  labels: np.ndarray  # float32 [N] in {0, 1}; NaN for unlabeled input.
  line_numbers: np.ndarray | None  # int64 [N] 1-based source line of each row.

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def values_are_ones(self) -> bool:
    """Whether `values` is the all-1.0 broadcast view of ones_values (nothing stored)."""
    return self.values.strides == (0, 0)


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
