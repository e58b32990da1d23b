"""Numbers and labels parsed from tokens, vectorised.

Integers of up to 8 digits and decimals of up to 8 characters are parsed 8 bytes at a
time with the SWAR trick, straight from the token heads of text.Tokens; anything else
goes through a strict regular expression. Labels are matched by token key.
"""

from __future__ import annotations

import re

import numpy as np

from gin_jax.data import text

_U = np.uint64
# For the 8-digit SWAR parser: left-shift a k-digit number to the top of the word and
# fill the vacated low bytes with ASCII '0' (leading zeros).
_SHIFTS = np.array([8 * (8 - k) if k else 0 for k in range(9)], dtype=np.uint64)
_ZERO_PAD = np.array(
  [int.from_bytes(b"0" * (8 - k), "little") if k < 8 else 0 for k in range(9)], dtype=np.uint64
)

_INT_RE = re.compile(rb"-?[0-9]+")
_FLOAT_RE = re.compile(rb"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def parse_numbers(
  tokens: text.Tokens, cols: list[int], integers_only: bool
) -> tuple[np.ndarray, list[tuple[int, int, bytes]]]:
  """Parses numeric token columns; the empty token is missing (NaN).

  Integers of up to 8 digits (nearly all of Criteo) and, unless integers_only,
  decimals of up to 8 characters ("12.5", "-0.25") are parsed 8 bytes at a time with
  the SWAR trick. Anything else goes through a strict regular expression in Python,
  so that "1_000", " 5" or "nan" (which float() accepts) are rejected, not coerced.

  Args:
    tokens: the chunk's tokens.
    cols: token columns.
    integers_only: accept only `-?[0-9]+` (Criteo); else also decimals and exponents.

  Returns:
    (float64 [n, len(cols)] values, NaN where missing; [(row, j, token)] of the
    tokens that are not numbers).
  """
  lens = text.select_columns(tokens.lens, cols)
  w = text.select_columns(tokens.heads, cols)
  # An empty token's first byte is its separator, never "-".
  neg = (w & _U(0xFF)) == _U(ord("-"))
  w = np.right_shift(w, _U(8), where=neg, out=w.copy())
  ndig = lens - neg
  x, ok = _parse_digits(w, ndig)
  values = x.astype(np.float64)
  if not integers_only and not ok.all():
    _parse_decimals(w, ndig, ok, values)
  np.negative(values, out=values, where=neg)
  values[lens == 0] = np.nan
  bad = []
  grammar = _INT_RE if integers_only else _FLOAT_RE
  if not ok.all():
    for r, j in zip(*np.nonzero(~ok & (lens > 0))):
      tok = tokens.token(r, cols[j])
      v = float(tok) if grammar.fullmatch(tok) else np.nan
      if np.isfinite(v):
        values[r, j] = v
      else:
        bad.append((int(r), int(j), tok))
  return values, bad


def _parse_digits(w: np.ndarray, ndig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The value of the ndig (1..8) ASCII digits in the low bytes of each word.

  Returns:
    (uint64 values, bool: the word held 1..8 digits and nothing else).
  """
  fits = (ndig - 1).view(np.uint64) < _U(8)  # 1 <= ndig <= 8.
  ndig = np.clip(ndig, 0, 8)
  # Shifting left drops the bytes past the token; the low bytes fill with '0'.
  x = (w << _SHIFTS[ndig]) | _ZERO_PAD[ndig]
  x_hi = x & _U(0xF0F0_F0F0_F0F0_F0F0)
  ok = (
    (x_hi | (((x + _U(0x0606_0606_0606_0606)) & _U(0xF0F0_F0F0_F0F0_F0F0)) >> _U(4)))
    == _U(0x3333_3333_3333_3333)
  ) & fits
  # Lemire's parse_eight_digits_unrolled (wrapping uint64 arithmetic).
  x -= _U(0x3030_3030_3030_3030)
  x = x * _U(10) + (x >> _U(8))
  m = _U(0x0000_00FF_0000_00FF)
  x = ((x & m) * _U(100 + (1000000 << 32)) + ((x >> _U(16)) & m) * _U(1 + (10000 << 32))) >> _U(32)
  return x, ok


def _parse_decimals(w: np.ndarray, ndig: np.ndarray, ok: np.ndarray, values: np.ndarray) -> None:
  """Parses the not-ok tokens that are `digits.digits` within 8 bytes, in place.

  The digits without the dot form an integer m, and the value is m / 10^f for f
  fraction digits: both exact in float64, so the IEEE division rounds exactly as
  float(token) does.
  """
  cand = np.flatnonzero(~ok.ravel() & (ndig.ravel() >= 2) & (ndig.ravel() <= 8))
  if not len(cand):
    return
  wc, nc = w.ravel()[cand], ndig.ravel()[cand]
  chars = wc.astype("<u8").view(np.uint8).reshape(-1, 8)  # Byte j: character j.
  dots = (chars == ord(".")) & (np.arange(8) < nc[:, None])
  one_dot = dots.sum(1) == 1
  p = np.argmax(dots, axis=1)
  low = wc & text.BYTE_MASKS[p]
  high = (wc >> ((p + 1) * 8).astype(np.uint64)) & text.BYTE_MASKS[np.maximum(nc - p - 1, 0)]
  digits = low | (high << (p * 8).astype(np.uint64))
  m, good = _parse_digits(digits, nc - 1)
  good &= one_dot
  scale = 10.0 ** (nc - 1 - p)
  flat_values, flat_ok = values.reshape(-1), ok.reshape(-1)
  flat_values[cand[good]] = m[good] / scale[good]
  flat_ok[cand[good]] = True


def _label_keys(tokens: text.Tokens, col: int) -> np.ndarray:
  return text.short_keys(tokens, [col])[0][:, 0]


def parse_binary_labels(tokens: text.Tokens, col: int) -> tuple[np.ndarray, np.ndarray]:
  """Labels "0"/"1". Returns (float32 [n] labels, rows with another token)."""
  keys = _label_keys(tokens, col)
  pos, neg = keys == text.bytes_to_keys([b"1"])[0], keys == text.bytes_to_keys([b"0"])[0]
  return pos.astype(np.float32), np.flatnonzero(~(pos | neg))


def parse_pm1_labels(tokens: text.Tokens, col: int) -> tuple[np.ndarray, np.ndarray]:
  """libfm labels "0"/"1" or "-1"/"+1" (-1 means 0). Returns (labels, bad rows)."""
  keys = _label_keys(tokens, col)
  pos = np.isin(keys, text.bytes_to_keys([b"1", b"+1"]))
  neg = np.isin(keys, text.bytes_to_keys([b"0", b"-1"]))
  return pos.astype(np.float32), np.flatnonzero(~(pos | neg))
