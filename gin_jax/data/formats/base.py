"""What every input format shares: layouts of tokens, parsed chunks, and the interface.

A Layout says which token of a row is the label and which tokens are which feature
columns. A Format finds a file's layout, reads the file in chunks and parses each
chunk into a RawChunk (labels, per-column keys or numbers, per-row source lines) plus
the list of bad rows with their reasons. prepare, encode and scoring use only the
Format interface; each format is one module of this package.

Any format: a category longer than MAX_CATEGORY_BYTES makes its row bad.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from gin_jax.data.formats.schema import CsvSchema

# A category longer than this is a bad row: it would enter the vocabulary, and with
# it every checkpoint and scoring artifact (a 10 MB token is a broken file, not data).
MAX_CATEGORY_BYTES = 1024


@dataclasses.dataclass(frozen=True)
class Column:
  """A feature column of the raw rows."""

  name: str
  kind: str  # "categorical", "multi_valued" (a list of categories) or "numeric".
  token: int  # Token index (within a row) of its category, list or number.
  value_token: int | None = None  # libfm: token index of its value multiplier.
  separator: str = ""  # multi_valued (csv): between the values of a row.
  max_values: int = 1  # multi_valued: values kept per row (the last ones): its slots.
  pooling: str = ""  # multi_valued: "mean", "sum" or "attention".
  target: str = ""  # pooling "attention": the field its values are weighed against.

  @property
  def keyed(self) -> bool:
    """Whether the column's tokens are category keys (categorical or multi_valued)."""
    return self.kind in ("categorical", "multi_valued")


def key_names(columns) -> tuple[str, ...]:
  """A RawChunk's key columns: the categorical columns."""
  return tuple(c.name for c in columns if c.kind == "categorical")


def list_names(columns) -> tuple[str, ...]:
  """A RawChunk's list columns: the multi-valued columns, in order."""
  return tuple(c.name for c in columns if c.kind == "multi_valued")


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the label and the features sit among the tokens of one row."""

  format: str  # The name of the Format that reads it.
  separators: bytes  # Bytes that end a token (besides b"\n").
  row_kinds: tuple[int, ...]  # The byte expected after each token of a row.
  label_token: int | None  # None: the rows carry no label (scoring input).
  columns: tuple[Column, ...]
  header_lines: int = 0  # Lines before the first record (the CSV header).
  header: tuple[str, ...] = ()  # csv, parquet: the names of all columns, in file order.

  @property
  def has_labels(self) -> bool:
    return self.label_token is not None


@dataclasses.dataclass
class ListValues:
  """One multi-valued column's values in a chunk, as many as the rows have.

  Row r's values are keys[offsets[r]:offsets[r + 1]]: the last max_values of its
  list, in order (none: an empty list, the missing value). Held so, not padded to
  max_values, until pass 2 writes the padded arrays (Encoder).

  Attributes:
    offsets: int64 [n + 1], offsets[0] = 0.
    keys: uint64 [offsets[-1]] value keys (text.short_keys; LONG_KEY for a value
      over 8 bytes).
    long_tokens: {index into keys: value} of the values over 8 bytes.
  """

  offsets: np.ndarray
  keys: np.ndarray
  long_tokens: dict[int, bytes] = dataclasses.field(default_factory=dict)

  @property
  def lengths(self) -> np.ndarray:
    """int64 [n]: the values of each row."""
    return np.diff(self.offsets)

  @property
  def nbytes(self) -> int:
    longs = sum(64 + len(t) for t in self.long_tokens.values())
    return self.offsets.nbytes + self.keys.nbytes + longs

  def take(self, keep: np.ndarray) -> ListValues:
    """The rows where the boolean mask `keep` is True."""
    lengths = self.lengths
    kept = np.repeat(keep, lengths)  # per value
    offsets = np.zeros(int(np.count_nonzero(keep)) + 1, np.int64)
    np.cumsum(lengths[keep], out=offsets[1:])
    new_index = np.cumsum(kept) - 1
    longs = {int(new_index[i]): t for i, t in self.long_tokens.items() if kept[i]}
    return ListValues(offsets, self.keys[kept], longs)

  def rows(self, a: int, b: int) -> ListValues:
    """Rows a to b (b excluded)."""
    lo, hi = int(self.offsets[a]), int(self.offsets[b])
    longs = {i - lo: t for i, t in self.long_tokens.items() if lo <= i < hi}
    return ListValues(self.offsets[a : b + 1] - lo, self.keys[lo:hi], longs)


@dataclasses.dataclass
class RawChunk:
  """The good rows of one chunk, before vocabularies are applied.

  Attributes:
    lines: int64 [n] 1-based source lines.
    labels: float32 [n] in {0, 1}; NaN when the file has no labels.
    cat_names: the key columns (key_names): the categorical columns.
    keys: uint64 [n, len(cat_names)] token keys (text.short_keys; 0 = missing).
    long_tokens: {(row, j): token} for categorical tokens over 8 bytes.
    num_names: the numeric columns.
    numbers: float64 [n, len(num_names)] values, NaN when missing.
    values: libfm only: float32 [n, len(cat_names)] value multipliers, else None.
    bucketized: whether `numbers` already went through vocab.bucketize.
    truncated: {multi-valued column: rows whose list was longer than max_values}
      (pass 1's summary; not kept by the spill).
    lists: {multi-valued column: its ListValues}, in the order of list_names.
  """

  lines: np.ndarray
  labels: np.ndarray
  cat_names: tuple[str, ...]
  keys: np.ndarray
  long_tokens: dict[tuple[int, int], bytes]
  num_names: tuple[str, ...]
  numbers: np.ndarray
  values: np.ndarray | None = None
  bucketized: bool = False
  truncated: dict[str, int] = dataclasses.field(default_factory=dict)
  lists: dict[str, ListValues] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.lines)

  @property
  def nbytes(self) -> int:
    """About the memory the chunk holds."""
    arrays = [self.lines, self.labels, self.keys, self.numbers]
    arrays += [self.values] if self.values is not None else []
    held = sum(a.nbytes for a in arrays) + sum(v.nbytes for v in self.lists.values())
    return held + sum(64 + len(t) for t in self.long_tokens.values())

  def keys_of(self, name: str) -> np.ndarray:
    return self.keys[:, self.cat_names.index(name)]

  def long_tokens_of(self, name: str) -> dict[int, bytes]:
    j = self.cat_names.index(name)
    return {r: t for (r, jj), t in self.long_tokens.items() if jj == j}

  def numbers_of(self, name: str) -> np.ndarray:
    return self.numbers[:, self.num_names.index(name)]

  def values_of(self, name: str) -> np.ndarray | None:
    return None if self.values is None else self.values[:, self.cat_names.index(name)]

  def take(self, keep: np.ndarray) -> RawChunk:
    """The rows where the boolean mask `keep` is True."""
    new_index = np.cumsum(keep) - 1
    return dataclasses.replace(
      self,
      lines=self.lines[keep],
      labels=self.labels[keep],
      keys=self.keys[keep],
      long_tokens={(int(new_index[r]), j): t for (r, j), t in self.long_tokens.items() if keep[r]},
      numbers=self.numbers[keep],
      values=None if self.values is None else self.values[keep],
      lists={name: v.take(keep) for name, v in self.lists.items()},
    )

  def rows(self, a: int, b: int) -> RawChunk:
    """Rows a to b (b excluded), sharing the arrays' memory."""
    return dataclasses.replace(
      self,
      lines=self.lines[a:b],
      labels=self.labels[a:b],
      keys=self.keys[a:b],
      long_tokens={(r - a, j): t for (r, j), t in self.long_tokens.items() if a <= r < b},
      numbers=self.numbers[a:b],
      values=None if self.values is None else self.values[a:b],
      lists={name: v.rows(a, b) for name, v in self.lists.items()},
    )


def show_token(tok: bytes) -> str:
  """A token for an error message: its repr as text, shortened past 40 characters."""
  s = tok.decode("utf-8", "backslashreplace")
  return repr(s if len(s) <= 40 else s[:37] + "...")


class Format(abc.ABC):
  """One input format: how to find a file's layout, read it in chunks and parse them.

  A chunk is whatever the format reads at a time (text.Chunk for the text formats,
  parquet.Chunk for Parquet); only the format's own parse_chunk looks inside it.
  """

  name: str  # The --format name: a key of gin_jax.config.FORMATS.
  needs_schema: bool = False  # Whether a schema file names the columns (DataConfig.schema).

  def last_line(self, path: str | os.PathLike, layout: Layout, on_progress=None) -> int:
    """The "line" of the input's last row, for data.split_by=line: here, of a text
    format's input, its last line, by reading its chunks (text.Chunk: whole lines)
    once without parsing them. Parquet counts rows in its footers instead."""
    last = 0
    for chunk in self.iter_chunks(path, layout, on_progress=on_progress):
      last = chunk.first_line + chunk.data.count(b"\n") - 1
    return last

  @abc.abstractmethod
  def fingerprint(self, path: str) -> dict:
    """What prepare's cache key hashes of an input (its size and mtime).

    Raises DataError when the input does not exist.
    """

  @abc.abstractmethod
  def detect_layout(
    self,
    path: str | os.PathLike,
    schema: CsvSchema | None = None,
    has_labels: bool | None = None,
    *,
    num_fields: int | None = None,
    train_header: Sequence[str] | None = None,
  ) -> Layout:
    """The layout of an input, from its first lines (or its footers).

    Args:
      path: the input.
      schema: names the columns (formats with needs_schema).
      has_labels: None: decide from the input.
      num_fields: the expected number of feature fields, when known (the training
        file's or dataset's); None: decide from the input.
      train_header: the training file's columns, when this is another input (names a
        missing header line plainly).

    Returns:
      The Layout. Raises DataError if the input fits no layout.
    """

  @abc.abstractmethod
  def rows_chunk(self, rows: Sequence[str]):
    """Raw rows held in memory as one chunk (for encode_rows); None when there are none.

    Raises DataError for rows the format cannot take from memory.
    """

  @abc.abstractmethod
  def rows_layout(
    self,
    chunk,
    schema: CsvSchema | None = None,
    has_labels: bool | None = None,
    *,
    num_fields: int | None = None,
    train_header: Sequence[str] | None = None,
    header: Sequence[str] | None = None,
    path: str = "<rows>",
  ) -> Layout:
    """The layout of a rows_chunk, deciding what is not given from its first row.

    Args: as detect_layout; `header` names the columns of the rows (csv), else they
      are the training file's (`train_header`); `path` names the rows in errors.
    """

  @abc.abstractmethod
  def iter_chunks(
    self,
    path: str | os.PathLike,
    layout: Layout,
    *,
    on_progress: Callable[[int], None] | None = None,
    chunk_bytes: int | None = None,
  ) -> Iterator:
    """The chunks of an input, in order.

    Args:
      path: the input.
      layout: its layout (from detect_layout).
      on_progress: called with the number of (on-disk) bytes consumed.
      chunk_bytes: text inputs: decompressed bytes per chunk (default text.CHUNK_BYTES).
    """

  @abc.abstractmethod
  def parse_chunk(self, chunk, layout: Layout) -> tuple[RawChunk, list[tuple]]:
    """Tokenises and validates a chunk.

    Returns:
      (the good rows, [(line, reason)] or [(line, reason, where)] for every bad row).
      Never drops a row silently.
    """
