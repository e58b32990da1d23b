"""Vocabularies: counting categories in bounded memory, and mapping them to ids fast.

Counting (pass 1) reduces each chunk to its unique keys and counts with numpy and
merges those into sorted arrays now and then, so memory is ~16 bytes per distinct
category (plus Python objects only for the rare tokens over 8 bytes), not per row.
Mapping (pass 2 and scoring) probes an open-addressing hash table held in two numpy
arrays, a few vectorised rounds per chunk (bucketized numbers use a dense table).
"""

from __future__ import annotations

import collections

import numpy as np

from gin_jax.data import text

_FIB = np.uint64(0x9E37_79B9_7F4A_7C15)
_SIGN = np.uint64(1 << 63)
_EMPTY = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def number_keys(buckets: np.ndarray) -> np.ndarray:
  """KeyIndex keys of float64 bucket values (their bits, -0.0 made 0.0)."""
  b = np.asarray(buckets, np.float64) + 0.0  # + 0.0 turns -0.0 into 0.0.
  return b.view(np.uint64) ^ _SIGN


def key_numbers(keys: np.ndarray) -> np.ndarray:
  """Inverse of number_keys."""
  return (np.asarray(keys, np.uint64) ^ _SIGN).view(np.float64)


def bucketize(x: np.ndarray) -> np.ndarray:
  """floor(ln(x)^2) for x > 2, else trunc(x) (the Criteo winners' / FuxiCTR rule).

  Note the rule's own quirk: x in {3, 4} lands in bucket 1 like x = 1, and x in 5..7
  in bucket 2 like x = 2. It is kept as is so that results compare with the
  literature. NaN (missing) stays NaN.
  """
  x = np.asarray(x, np.float64)
  out = np.trunc(x)
  big = x > 2  # The logarithm only where it is used: it is the costly part.
  out[big] = np.floor(np.log(x[big]) ** 2)
  return out


def scale(x: np.ndarray) -> np.ndarray:
  """sign(x) * ln(1 + |x|): the value a `scale` numeric field multiplies its row by."""
  x = np.asarray(x, np.float64)
  return (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32)


class KeyCounter:
  """Counts uint64 keys (and long byte tokens) over many chunks in bounded memory."""

  def __init__(self):
    self.keys = np.zeros(0, np.uint64)  # Sorted, unique.
    self.counts = np.zeros(0, np.int64)
    self._pending: list[tuple[np.ndarray, np.ndarray]] = []
    self._pending_size = 0
    self.long: collections.Counter[bytes] = collections.Counter()

  def add_unique(self, keys: np.ndarray, counts: np.ndarray) -> None:
    """Adds a chunk's unique keys with their counts."""
    self._pending.append((keys, counts))
    self._pending_size += len(keys)
    # Merging costs O(total); doing it only when the pending part has grown as large as
    # the merged part keeps the amortised cost O(log) per key.
    if self._pending_size > max(1 << 20, len(self.keys)):
      self._merge()

  def _merge(self) -> None:
    if not self._pending:
      return
    parts = [(self.keys, self.counts), *self._pending]
    merged = np.unique(np.concatenate([k for k, _ in parts]))
    counts = np.zeros(len(merged), np.int64)
    for k, c in parts:
      counts[np.searchsorted(merged, k)] += c  # Keys are unique within a part.
    self.keys, self.counts = merged, counts
    self._pending, self._pending_size = [], 0

  def absorb(self, other: KeyCounter) -> None:
    """Adds every count of `other` (a column that shares this one's vocabulary)."""
    other._merge()
    self.add_unique(other.keys, other.counts)
    self.long.update(other.long)

  def num_distinct(self) -> int:
    """Distinct keys and long tokens counted so far."""
    self._merge()
    return len(self.keys) + len(self.long)

  def vocabulary(self, min_count: int) -> list[bytes]:
    """Tokens seen at least min_count times, most frequent first (ties by key)."""
    self._merge()
    keep = self.counts >= min_count
    keys, counts = self.keys[keep], self.counts[keep]
    order = np.lexsort((keys, -counts))
    tokens = text.key_to_bytes(keys[order])
    counts = counts[order]
    longs = sorted(((-c, t) for t, c in self.long.items() if c >= min_count))
    if not longs:
      return tokens
    # Merge the long tokens in by count; stable, so ties keep short tokens first.
    all_counts = np.concatenate([counts, [-c for c, _ in longs]])
    merged = tokens + [t for _, t in longs]
    return [merged[i] for i in np.argsort(-all_counts, kind="stable")]

  def token_counts(self) -> dict[bytes, int]:
    """Every token counted so far with its count (vocabulary growth's OOV rates)."""
    self._merge()
    out = dict(zip(text.key_to_bytes(self.keys), self.counts.tolist()))
    out.update(self.long)
    return out

  def number_counts(self) -> dict[int, int]:
    """For number_keys: every bucket value counted so far with its count."""
    self._merge()
    return {int(v): int(c) for v, c in zip(key_numbers(self.keys), self.counts)}

  def numbers(self, min_count: int) -> list[int]:
    """For number_keys: bucket values seen at least min_count times, most frequent first."""
    self._merge()
    keep = self.counts >= min_count
    keys, counts = self.keys[keep], self.counts[keep]
    values = key_numbers(keys[np.lexsort((keys, -counts))])
    return [int(v) for v in values]


def count_unique(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The unique keys of a chunk column with their counts (hash-based, unsorted)."""
  return np.unique(keys, return_counts=True, sorted=False)


class KeyIndex:
  """Maps uint64 keys to int32 values: an open-addressing hash table in numpy arrays.

  The all-ones key marks empty slots and cannot be stored: no short token has it
  (eight 0xFF bytes are not UTF-8; it is text.LONG_KEY) and no bucket value does
  (number_keys of a NaN). Looking it up finds an empty slot, i.e. the default.
  """

  def __init__(self, keys: np.ndarray, values: np.ndarray):
    keys = np.asarray(keys, np.uint64)
    if len(keys) and (keys == _EMPTY).any():
      raise ValueError("the all-ones key is reserved")
    # A sparse table means fewer probe rounds (each round is a few numpy passes); keep
    # it sparse while that is cheap, and half full for huge vocabularies.
    load = 8 if len(keys) <= 1 << 16 else 4 if len(keys) <= 1 << 20 else 2
    bits = max(4, int(np.ceil(np.log2(load * len(keys) + 1))))
    self._shift = np.uint64(64 - bits)
    self._mask = (1 << bits) - 1
    self._keys = np.full(1 << bits, _EMPTY, np.uint64)
    self._vals = np.zeros(1 << bits, np.int32)
    values = np.asarray(values, np.int32)
    pending = np.arange(len(keys))
    slots = self._slots(keys)
    while len(pending):
      free = self._keys[slots[pending]] == _EMPTY
      cand = pending[free]
      self._keys[slots[cand]] = keys[cand]
      placed = self._keys[slots[cand]] == keys[cand]  # Among equal slots one wins.
      self._vals[slots[cand[placed]]] = values[cand[placed]]
      pending = np.concatenate([pending[~free], cand[~placed]])
      slots[pending] = (slots[pending] + 1) & self._mask

  def _slots(self, keys: np.ndarray) -> np.ndarray:
    return ((keys * _FIB) >> self._shift).view(np.int64)

  def lookup(self, keys: np.ndarray, default: int) -> np.ndarray:
    """int32 [...]: the value of each key, `default` where absent."""
    keys = np.asarray(keys, np.uint64)
    slots = self._slots(keys)
    found = self._keys[slots]
    hit = found == keys
    out = np.where(hit, self._vals[slots], np.int32(default))
    pending = np.flatnonzero(~hit & (found != _EMPTY))
    if not len(pending):
      return out
    # Rare collisions: probe the next slots, for the pending keys only.
    flat_keys, flat_slots, flat_out = keys.ravel(), slots.ravel(), out.reshape(-1)
    while len(pending):
      flat_slots[pending] = (flat_slots[pending] + 1) & self._mask
      found = self._keys[flat_slots[pending]]
      hit = found == flat_keys[pending]
      flat_out[pending[hit]] = self._vals[flat_slots[pending[hit]]]
      pending = pending[~hit & (found != _EMPTY)]
    return out


class StackedKeyIndex:
  """Several KeyIndex tables probed as one: a lookup of every column of a key matrix at once.

  Column j of the keys goes to table j. The tables' arrays are laid end to end and
  each keeps its own size and hash, so every key lands where its own table would put
  it: the ids are exactly the tables' own, for a few numpy passes over the whole
  matrix instead of a few per column (what a request of a few rows costs).
  """

  def __init__(self, indexes: list[KeyIndex]):
    sizes = [len(ix._keys) for ix in indexes]
    self._base = np.cumsum([0] + sizes[:-1]).astype(np.int64)
    self._mask = np.array([ix._mask for ix in indexes], np.int64)
    self._shift = np.array([ix._shift for ix in indexes], np.uint64)
    empty = np.zeros(0, np.uint64)
    self._keys = np.concatenate([ix._keys for ix in indexes]) if indexes else empty
    self._vals = np.concatenate([ix._vals for ix in indexes]) if indexes else empty.view(np.int64)

  def lookup(self, keys: np.ndarray, defaults: np.ndarray) -> np.ndarray:
    """int32 [n, tables]: the value of keys[:, j] in table j, defaults[j] where absent."""
    # C order: the probing below writes through flat views, which must not be copies.
    keys = np.ascontiguousarray(keys, np.uint64)
    local = ((keys * _FIB) >> self._shift).view(np.int64)
    slots = local + self._base
    found = self._keys[slots]
    hit = found == keys
    out = np.where(hit, self._vals[slots], np.asarray(defaults, np.int32)).astype(np.int32)
    pending = np.flatnonzero(~hit & (found != _EMPTY))
    if not len(pending):
      return out
    # Rare collisions: probe the next slots of each key's own table.
    cols = pending % keys.shape[1]
    flat_keys, flat_local, flat_out = keys.ravel(), local.ravel(), out.reshape(-1)
    while len(pending):
      flat_local[pending] = (flat_local[pending] + 1) & self._mask[cols]
      at = flat_local[pending] + self._base[cols]
      found = self._keys[at]
      hit = found == flat_keys[pending]
      flat_out[pending[hit]] = self._vals[at[hit]]
      keep = ~hit & (found != _EMPTY)
      pending, cols = pending[keep], cols[keep]
    return out
