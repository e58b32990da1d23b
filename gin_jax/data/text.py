"""Raw text input: (gzip) files cut into whole-line chunks, and vectorised tokenisation.

Speed comes from never touching single tokens in Python on the common path. A chunk of
whole lines is one bytes object; the positions of all separators come from one numpy
pass over it; every token is then a (start, length) pair, and the first 8 bytes of
every token come from one gather on an unaligned uint64 view of the chunk. A token of
at most 8 bytes (all of Criteo) is identified by that little-endian word itself (its
"key"); only rare long tokens and rare malformed rows go through Python. Numbers and
labels are parsed from the same token heads by module token_values.

Decisions about odd input, applied to every format:
- CRLF line ends are accepted: "\r\n" is normalised to "\n" before anything else.
- A missing final newline is accepted (the last line still counts).
- An empty line is a bad row (it is neither a record nor, in these formats, a comment).
- Any other control byte (< 0x20) inside a line makes the row bad: it cannot be told
  apart from a broken separator, and NUL would make the word keys ambiguous.
- Bytes that are not valid UTF-8 make the row bad. Categories are stored in the JSON
  metadata as text so that scoring can re-encode new files; a token that is not text
  could not be stored faithfully, and such bytes nearly always mean a corrupt or
  mis-encoded file that the user should hear about.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Callable, Iterator

import numpy as np

from gin_jax.data.errors import DataError

CHUNK_BYTES = 8 << 20  # Decompressed bytes per chunk (~30k Criteo lines).
MAX_LINE_BYTES = 64 << 20  # Longer "lines" mean a file that is not line-oriented text.
_RAW_BLOCK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"

MISSING_KEY = np.uint64(0)  # Key of the empty token (a missing value).
LONG_KEY = np.uint64(0xFFFF_FFFF_FFFF_FFFF)  # Placeholder key of a token > 8 bytes.
# BYTE_MASKS[k] keeps the first k bytes (little endian: the low k bytes) of a word.
BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)


@dataclasses.dataclass(frozen=True)
class Chunk:
  """Whole lines of one file, each ending in b"\\n" (CRLF already normalised).

  Of an input with several parts (formats.parts), `first_line` counts through the
  whole input and `part` names the file: its own line k is input line `base + k`.
  """

  data: bytes
  first_line: int  # 1-based source line number of the first line in `data`.
  part: str | None = None  # The part file, when the input has several.
  base: int = 0  # Lines of the input before this part.

  def where(self, line: int) -> str | None:
    """`part:line` of an input line, for an input with several parts (else None)."""
    return None if self.part is None else f"{self.part}:{line - self.base}"


def is_gzip(path: str | os.PathLike) -> bool:
  """True when the file starts with the gzip magic bytes (whatever its name)."""
  with open(path, "rb") as f:
    return f.read(2) == _GZIP_MAGIC


class _Truncated(Exception):
  pass


def _blocks(path: str | os.PathLike, on_progress: Callable[[int], None] | None):
  """Yields decompressed blocks; raises _Truncated or DataError for broken gzip."""
  gz = is_gzip(path)
  with open(path, "rb") as raw:
    if not gz:
      while block := raw.read(CHUNK_BYTES):
        if on_progress:
          on_progress(len(block))
        yield block
      return
    # zlib directly instead of gzip.GzipFile: it hands out everything decompressed
    # before a truncation, so the error can name the line where the data stops.
    d, fresh = zlib.decompressobj(wbits=31), True
    while block := raw.read(_RAW_BLOCK):
      if on_progress:
        on_progress(len(block))
      while block:
        try:
          out = d.decompress(block)
        except zlib.error as e:
          raise DataError(f"{path}: corrupt gzip data ({e})") from None
        fresh = False
        if out:
          yield out
        if d.eof:  # Multi-member gzip (e.g. concatenated day files): start over.
          block, d, fresh = d.unused_data, zlib.decompressobj(wbits=31), True
        else:
          block = b""
    if not fresh and not d.eof:
      raise _Truncated


def iter_chunks(
  path: str | os.PathLike,
  *,
  skip_lines: int = 0,
  chunk_bytes: int | None = None,
  on_progress: Callable[[int], None] | None = None,
) -> Iterator[Chunk]:
  """Reads a text file (plain or gzip) as chunks of whole lines.

  Args:
    path: the file.
    skip_lines: leading lines to drop (a CSV header); line numbers still count them.
    chunk_bytes: approximate decompressed size of one chunk (default CHUNK_BYTES).
    on_progress: called with the number of raw (on-disk) bytes consumed.

  Returns:
    An iterator of Chunk. Raises DataError for an empty file or broken gzip data.
  """
  chunk_bytes = chunk_bytes or CHUNK_BYTES
  line, pending, size, total = 1, [], 0, 0
  try:
    for block in _blocks(path, on_progress):
      total += len(block)
      pending.append(block)
      size += len(block)
      if size < chunk_bytes:
        continue
      # Cut the text read so far into chunks of at most chunk_bytes (a block read
      # or decompressed at once can be several), each ending at a line end.
      data, start = b"".join(pending), 0
      while len(data) - start >= chunk_bytes:
        cut = data.rfind(b"\n", start, start + chunk_bytes) + 1
        if cut <= start:  # One line longer than a chunk: up to its end, if read.
          cut = data.find(b"\n", start + chunk_bytes) + 1
          if cut == 0:
            if len(data) - start > MAX_LINE_BYTES:
              raise DataError(f"{path}:{line}: line longer than {MAX_LINE_BYTES >> 20} MiB")
            break  # Keep reading (up to a limit).
        piece, start = data[start:cut], cut
        chunk, skip_lines = _make_chunk(piece, line, skip_lines)
        line += piece.count(b"\n")
        if chunk is not None:
          yield chunk
      pending, size = [data[start:]], len(data) - start
  except _Truncated:
    at = line + b"".join(pending).count(b"\n")
    raise DataError(f"{path}:{at}: gzip data ends early (truncated file?)") from None
  if total == 0:
    raise DataError(f"{path}: empty file")
  data = b"".join(pending)
  if data:
    if not data.endswith(b"\n"):
      data += b"\n"
    chunk, _ = _make_chunk(data, line, skip_lines)
    if chunk is not None:
      yield chunk


def _make_chunk(data: bytes, line: int, skip_lines: int) -> tuple[Chunk | None, int]:
  while skip_lines and data:
    data = data[data.find(b"\n") + 1 :]
    line, skip_lines = line + 1, skip_lines - 1
  if not data:
    return None, skip_lines
  if b"\r" in data:
    data = data.replace(b"\r\n", b"\n")
  return Chunk(data, line), skip_lines


def read_head(path: str | os.PathLike, max_bytes: int = 1 << 16) -> list[bytes]:
  """The whole lines in about the first max_bytes of a file (CRLF normalised)."""
  for chunk in iter_chunks(path, chunk_bytes=max_bytes):
    return chunk.data.split(b"\n")[:-1]
  raise DataError(f"{path}: empty file")


# ------------------------------------------------------------------- tokens


@dataclasses.dataclass
class Tokens:
  """The tokens of the good rows of one chunk, as byte ranges into `data`.

  Attributes:
    data: the chunk's bytes.
    heads: uint64 [n, ntok]: the first 8 bytes of every token, little endian, not
      masked to the token's length.
    starts: int64 [n, ntok] byte offset of every token.
    lens: int64 [n, ntok] byte length of every token.
    lines: int64 [n] 1-based source line of every row.
  """

  data: bytes
  heads: np.ndarray
  starts: np.ndarray
  lens: np.ndarray
  lines: np.ndarray

  def __len__(self) -> int:
    return len(self.lines)

  def token(self, row: int, col: int) -> bytes:
    s = int(self.starts[row, col])
    return self.data[s : s + int(self.lens[row, col])]

  def keep(self, mask: np.ndarray) -> Tokens:
    return dataclasses.replace(
      self,
      heads=self.heads[mask],
      starts=self.starts[mask],
      lens=self.lens[mask],
      lines=self.lines[mask],
    )


def tokenize(
  chunk: Chunk,
  separators: bytes,
  row_kinds: np.ndarray,
  describe: Callable[[bytes], str],
) -> tuple[Tokens, list[tuple[int, str]]]:
  """Splits a chunk into tokens, checking every row against the expected layout.

  Args:
    chunk: whole lines.
    separators: the separator bytes of the format (e.g. b"\\t", or b" :" for libfm).
    row_kinds: uint8 [ntok]: the byte expected after each token of a row (the last
      one is b"\\n").
    describe: gives the reason a malformed line (without its newline) is bad.

  Returns:
    (tokens of the good rows, [(line, reason)] of the bad rows).
  """
  data, ntok = chunk.data, len(row_kinds)
  arr, pos = _special_positions(data, separators)
  kinds = arr[pos]
  n = len(pos) // ntok
  bad: list[tuple[int, str]] = []
  lines = np.arange(chunk.first_line, chunk.first_line + n, dtype=np.int64)
  if len(pos) != n * ntok or not np.array_equal(
    kinds.reshape(n, ntok), np.broadcast_to(row_kinds, (n, ntok))
  ):
    # Slow path, only for chunks with malformed rows: name them, rebuild the chunk
    # from the good rows and tokenise that (which then takes the fast path).
    data, lines, bad = _drop_malformed(chunk, pos, kinds, row_kinds, describe)
    arr, pos = _special_positions(data, separators)
    n = len(pos) // ntok
  starts = np.empty(len(pos), np.int64)
  starts[:1] = 0
  starts[1:] = pos[:-1] + 1
  heads = _heads(data, starts).reshape(n, ntok)
  starts = starts.reshape(n, ntok)
  tokens = Tokens(data, heads, starts, pos.reshape(n, ntok) - starts, lines)
  if n and arr.max() >= 0x80:
    tokens, bad_utf8 = _drop_invalid_utf8(tokens, arr)
    bad += bad_utf8
  return tokens, bad


def column_tokens(
  data: bytes, offsets: np.ndarray, lines: np.ndarray, valid: np.ndarray | None = None
) -> Tokens:
  """The Tokens of one column of values stored end to end (Arrow's string layout).

  Lets columnar input (Parquet) reuse the key and number parsers of this module.

  Args:
    data: the values' bytes: value i is data[offsets[i] : offsets[i + 1]].
    offsets: [n + 1] non-decreasing offsets, the first one 0.
    lines: int64 [n] source line (row number) of each value.
    valid: bool [n]: False where the value is null (it becomes the empty token).

  Returns:
    Tokens with one token column.
  """
  data = b"".join((data, b"\n"))  # As in a chunk: every token, even empty, starts in data.
  offsets = np.asarray(offsets, np.int64)
  starts, lens = offsets[:-1], np.diff(offsets)
  if valid is not None:
    lens = np.where(valid, lens, 0)
  return Tokens(data, _heads(data, starts)[:, None], starts[:, None], lens[:, None], lines)


def nul_joined_tokens(data: bytes, rows: int, cols: int, lines: np.ndarray) -> Tokens | None:
  """The Tokens of rows x cols values joined by NUL bytes, column after column.

  Lets values held in memory (records.py: a request's columns) reuse the key and
  number parsers of this module: value (r, j) is the (j * rows + r)-th of `data`.

  Returns:
    Tokens [rows, cols], or None when `data` does not hold rows * cols values (a
    value had a NUL byte of its own).
  """
  if not rows * cols:
    empty = np.zeros((rows, cols), np.int64)
    return Tokens(data, empty.astype(np.uint64), empty, empty, lines)
  arr = np.frombuffer(data, np.uint8)
  ends = np.flatnonzero(arr == 0)
  if len(ends) != rows * cols - 1:
    return None
  data = b"".join((data, b"\n"))  # As in a chunk: every token, even empty, starts in data.
  starts = np.empty(rows * cols, np.int64)
  starts[0] = 0
  starts[1:] = ends + 1
  lens = np.append(ends, len(arr)) - starts
  heads = _heads(data, starts)
  shape = lambda x: x.reshape(cols, rows).T
  return Tokens(data, shape(heads), shape(starts), shape(lens), lines)


def _special_positions(data: bytes, separators: bytes) -> tuple[np.ndarray, np.ndarray]:
  """The chunk as uint8, and the offsets of its separators, line ends and control bytes."""
  arr = np.frombuffer(data, np.uint8)
  special = arr < 32
  for s in separators:
    if s >= 32:
      special |= arr == s
  return arr, np.flatnonzero(special)


def _heads(data: bytes, starts: np.ndarray) -> np.ndarray:
  """The 8 bytes at each (ascending) offset, as little-endian uint64, NUL past the end.

  One gather through an unaligned uint64 view of the chunk: ascending offsets, so it
  streams through memory. Offsets in the last 7 bytes read the last whole word and
  shift (no padded copy of the chunk).
  """
  if len(data) < 8:
    data = data + b"\0" * 8
  last = len(data) - 8
  words = np.ndarray((last + 1,), dtype="<u8", buffer=data, strides=(1,))
  k = int(np.searchsorted(starts, last, side="right"))
  heads = np.empty(len(starts), np.uint64)
  heads[:k] = words[starts[:k]]
  heads[k:] = words[last] >> ((starts[k:] - last) * 8).astype(np.uint64)
  return heads


def _drop_malformed(chunk, pos, kinds, row_kinds, describe):
  ntok = len(row_kinds)
  nl = np.flatnonzero(kinds == 10)
  first = np.concatenate([[0], nl[:-1] + 1])
  ok = (nl - first + 1) == ntok
  cand = np.flatnonzero(ok)
  if len(cand):
    ok[cand] = (kinds[first[cand, None] + np.arange(ntok)] == row_kinds).all(1)
  ends = pos[nl]
  begins = np.concatenate([[0], ends[:-1] + 1])
  data = chunk.data
  bad = [
    (chunk.first_line + int(r), describe(data[begins[r] : ends[r]])) for r in np.flatnonzero(~ok)
  ]
  good = np.flatnonzero(ok)
  pieces = [data[begins[r] : ends[r] + 1] for r in good] if len(good) < 64 else None
  if pieces is None:  # Join runs of consecutive good rows, not single rows.
    breaks = np.flatnonzero(np.diff(good) != 1)
    run_first = good[np.concatenate([[0], breaks + 1])]
    run_last = good[np.concatenate([breaks, [len(good) - 1]])]
    pieces = [data[begins[a] : ends[b] + 1] for a, b in zip(run_first, run_last)]
  return b"".join(pieces), chunk.first_line + good.astype(np.int64), bad


def _drop_invalid_utf8(tokens: Tokens, arr: np.ndarray):
  line_ends = tokens.starts[:, -1] + tokens.lens[:, -1]
  rows = np.unique(np.searchsorted(line_ends, np.flatnonzero(arr >= 0x80)))
  keep = np.ones(len(tokens), bool)
  bad = []
  for r in rows:
    begin = int(tokens.starts[r, 0])
    line = tokens.data[begin : int(line_ends[r])]
    try:
      line.decode("utf-8")
    except UnicodeDecodeError as e:
      keep[r] = False
      bad.append(
        (int(tokens.lines[r]), f"invalid UTF-8 byte 0x{line[e.start]:02x} at column {e.start + 1}")
      )
  return (tokens.keep(keep) if bad else tokens), bad


def describe_line(line: bytes, sep: bytes, ntok: int, sep_name: str) -> str:
  """The reason a line does not have `ntok` fields separated by `sep`."""
  if not line:
    return "empty line"
  for i, b in enumerate(line):
    if b < 32 and bytes([b]) != sep:
      return f"control character 0x{b:02x} at column {i + 1}"
  return f"expected {ntok} {sep_name}-separated fields, got {line.count(sep) + 1}"


# --------------------------------------------------------------- token keys


def select_columns(arr: np.ndarray, cols: list[int]) -> np.ndarray:
  """arr[:, cols], as a view when the columns are consecutive (the usual case)."""
  if cols and cols == list(range(cols[0], cols[0] + len(cols))):
    return arr[:, cols[0] : cols[0] + len(cols)]
  return arr[:, cols]


def short_keys(tokens: Tokens, cols: list[int]) -> tuple[np.ndarray, list[tuple[int, int]]]:
  """Keys of token columns: each token's bytes as a little-endian uint64 (NUL padded).

  Args:
    tokens: the chunk's tokens.
    cols: token columns.

  Returns:
    (keys uint64 [n, len(cols)], [(row, j)] of tokens longer than 8 bytes, whose key is
    LONG_KEY). The empty token has key MISSING_KEY (0); no other token does, since
    tokenize rejects NUL bytes.
  """
  lens = select_columns(tokens.lens, cols)
  keys = select_columns(tokens.heads, cols) & BYTE_MASKS[np.minimum(lens, 8)]
  longs = []
  if lens.max(initial=0) > 8:
    rows, js = np.nonzero(lens > 8)
    keys[rows, js] = LONG_KEY
    longs = list(zip(rows.tolist(), js.tolist()))
  return keys, longs


def key_to_bytes(keys: np.ndarray) -> list[bytes]:
  """Inverse of short_keys for short tokens."""
  return np.asarray(keys, "<u8").view("S8").tolist()


def bytes_to_keys(tokens: list[bytes]) -> np.ndarray:
  """short_keys of a list of tokens of at most 8 bytes."""
  return np.array(tokens, dtype="S8").view("<u8").reshape(len(tokens))
