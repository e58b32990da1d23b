"""What the line-oriented text formats (criteo, csv, libfm) share: one record per line.

An input is one file (plain or gzip), or several (a directory or glob: module
parts), read by module text in chunks of whole lines;
rows are tokenised against the Layout's separators, then labels, numbers and category
keys are parsed column by column. A format module subclasses DelimitedText and sets
or overrides only what differs: the label grammar, the number grammar, the reason
given for a malformed line, and checks of its own.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from gin_jax.data import text, token_values
from gin_jax.data.errors import DataError
from gin_jax.data.formats import parts
from gin_jax.data.formats.base import (
  MAX_CATEGORY_BYTES,
  Column,
  Format,
  Layout,
  RawChunk,
  key_names,
  show_token,
)
from gin_jax.data.formats.lists import list_keys

_SEPARATOR_NAMES = {b"\t": "tab", b",": "comma"}


def first_row(chunk: text.Chunk) -> bytes:
  """The first line of a chunk, without its line end."""
  return chunk.data[: chunk.data.find(b"\n")].rstrip(b"\r")


def first_record(head: list[bytes]) -> bytes:
  """The first non-empty line: a bad first line must not decide the layout of a file."""
  return next((line for line in head if line), b"")


class DelimitedText(Format):
  """A text format with one record per line (see the module docstring)."""

  integers_only = False  # Numeric columns take only `-?[0-9]+` (else decimals too).
  parse_labels = staticmethod(token_values.parse_binary_labels)  # (tokens, col) -> (y, bad)
  label_values = "{0, 1}"  # What the message of a bad label says labels may be.

  # ------------------------------------------------------------ reading

  def fingerprint(self, path: str) -> dict:
    return parts.fingerprint(path)

  def iter_chunks(
    self,
    path: str | os.PathLike,
    layout: Layout,
    *,
    on_progress: Callable[[int], None] | None = None,
    chunk_bytes: int | None = None,
  ) -> Iterator[text.Chunk]:
    """The chunks of a file, or of every part of a directory or glob in order.

    Several parts are one input: lines are numbered through all of them (a row's
    "line" decides its split), each chunk names its part, and a bad row is named
    `part:line` in the part's own numbering. A part with a header line must have
    the first part's; an empty part (0 bytes) has no rows.
    """
    files = parts.part_files(path)
    if not parts.is_many(path):
      yield from text.iter_chunks(
        path, skip_lines=layout.header_lines, on_progress=on_progress, chunk_bytes=chunk_bytes
      )
      return
    base, header = 0, None
    for part in files:
      if os.path.getsize(part) == 0:  # an hour without traffic: nothing to read
        continue
      if layout.header_lines:
        header = self._check_header(part, parts.first(path), header)
      last = layout.header_lines
      for chunk in text.iter_chunks(
        part, skip_lines=layout.header_lines, on_progress=on_progress, chunk_bytes=chunk_bytes
      ):
        last = chunk.first_line + chunk.data.count(b"\n") - 1
        yield dataclasses.replace(chunk, first_line=base + chunk.first_line, part=part, base=base)
      base += last

  @staticmethod
  def _check_header(part: str, first: str, header: bytes | None) -> bytes:
    """The header line of `part`; DataError unless it is `header` (the first part's)."""
    head = text.read_head(part, max_bytes=1 << 16)
    line = head[0] if head else b""
    if header is not None and line != header:
      raise DataError(
        f"{part}:1: its header {show_token(line)} differs from that of {first} "
        f"({show_token(header)}): the parts of one input must have the same columns"
      )
    return line

  def rows_chunk(self, rows: Sequence[str]) -> text.Chunk | None:
    lines = [r[:-1] if r.endswith("\n") else r for r in rows]
    if any("\n" in r for r in lines):
      raise DataError("<rows>: a row contains a line break")
    if not lines:
      return None
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")
    return text.Chunk(data.replace(b"\r\n", b"\n"), 1)

  # ------------------------------------------------------------ parsing

  def parse_chunk(self, chunk: text.Chunk, layout: Layout) -> tuple[RawChunk, list[tuple]]:
    """Tokenises and validates a chunk of whole lines.

    Returns:
      (the good rows, [(line, reason)] for every bad row). Never drops a row silently.
    """
    chunk = self.normalize(chunk)
    kinds = np.array(layout.row_kinds, np.uint8)
    describe = self.describe(layout)
    tokens, bad = text.tokenize(chunk, layout.separators, kinds, describe)
    row_bad: dict[int, str] = {}  # Row -> the first reason it is bad.
    numeric = [c for c in layout.columns if c.kind == "numeric"]
    categorical = [c for c in layout.columns if c.kind == "categorical"]
    raw = RawChunk(
      lines=tokens.lines,
      labels=self._labels(tokens, layout, row_bad),
      cat_names=key_names(layout.columns),
      keys=np.zeros((len(tokens), 0), np.uint64),
      long_tokens={},
      num_names=tuple(c.name for c in numeric),
      numbers=self._numbers(tokens, layout, numeric, row_bad),
      values=self._values(tokens, categorical, row_bad),
    )
    self._check_categories(tokens, layout, categorical, row_bad)
    if categorical:
      raw.keys, longs = text.short_keys(tokens, [c.token for c in categorical])
      raw.long_tokens = {(r, j): tokens.token(r, categorical[j].token) for r, j in longs}
    for c in (c for c in layout.columns if c.kind == "multi_valued"):
      tokens_c = [tokens.token(r, c.token) for r in range(len(tokens))]
      raw.lists[c.name], raw.truncated[c.name], bad_lists = list_keys(tokens_c, c)
      for r, reason in bad_lists.items():
        row_bad.setdefault(r, reason)
    if row_bad:
      keep = np.ones(len(tokens), bool)
      keep[list(row_bad)] = False
      raw = raw.take(keep)
      bad += [(int(tokens.lines[r]), reason) for r, reason in row_bad.items()]
    if chunk.part is not None:
      bad = [(line, reason, chunk.where(line)) for line, reason in bad]
    return raw, bad

  def normalize(self, chunk: text.Chunk) -> text.Chunk:
    """The chunk as tokenize takes it (the format's own clean-up of lines)."""
    return chunk

  def describe(self, layout: Layout) -> Callable[[bytes], str]:
    """The reason a malformed line (without its newline) is bad."""
    sep = layout.separators[:1]
    name = _SEPARATOR_NAMES.get(sep, repr(sep.decode()))
    ntok = len(layout.row_kinds)
    return lambda line: text.describe_line(line, sep, ntok, name)

  def _labels(self, tokens: text.Tokens, layout: Layout, row_bad: dict[int, str]) -> np.ndarray:
    if not layout.has_labels:
      return np.full(len(tokens), np.nan, np.float32)
    labels, bad_rows = self.parse_labels(tokens, layout.label_token)
    for r in bad_rows:
      tok = show_token(tokens.token(r, layout.label_token))
      row_bad.setdefault(int(r), f"label {tok} not in {self.label_values}")
    return labels

  def _numbers(self, tokens, layout: Layout, numeric: list[Column], row_bad) -> np.ndarray:
    if not numeric:
      return np.zeros((len(tokens), 0))
    cols = [c.token for c in numeric]
    numbers, bad = token_values.parse_numbers(tokens, cols, integers_only=self.integers_only)
    kind = "an integer" if self.integers_only else "a number"
    for r, j, tok in bad:
      row_bad.setdefault(r, f"{numeric[j].name}: {show_token(tok)} is not {kind}")
    return numbers

  def _values(self, tokens, categorical: list[Column], row_bad) -> np.ndarray | None:
    """The value multipliers of the categorical columns; None: all 1.0."""
    return None

  def _check_categories(self, tokens, layout: Layout, categorical: list[Column], row_bad) -> None:
    """Over-long categories make rows bad."""
    if not categorical:
      return
    lens = text.select_columns(tokens.lens, [c.token for c in categorical])
    for r, j in zip(*np.nonzero(lens > MAX_CATEGORY_BYTES)):
      row_bad.setdefault(
        int(r),
        f"{categorical[j].name}: a category of {int(lens[r, j])} bytes "
        f"(the limit is {MAX_CATEGORY_BYTES})",
      )
