"""A stable 64-bit hash of tokens (splitmix64), the same in every process and run.

Hashed categorical fields (hash_buckets > 0) hash their tokens with it when a dataset is
prepared and again when new files are scored, so it must never change. The random
split of rows and the shuffle of training batches use it as a keyed pseudorandom
function of line numbers and positions.
"""

from __future__ import annotations

import numpy as np

_U = np.uint64
_HASH_SEED = 0x5EED_C0FF_EE15_600D
_GOLDEN = 0x9E37_79B9_7F4A_7C15
_M64 = (1 << 64) - 1


def _mix(z: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser (vectorised, wrapping uint64 arithmetic)."""
  z = z + _U(_GOLDEN)
  z = (z ^ (z >> _U(30))) * _U(0xBF58_476D_1CE4_E5B9)
  z = (z ^ (z >> _U(27))) * _U(0x94D0_49BB_1331_11EB)
  return z ^ (z >> _U(31))


def hash_keys(keys: np.ndarray) -> np.ndarray:
  """Stable 64-bit hash of tokens of at most 8 bytes, given as their keys.

  Equals hash_token(token) for every such token. Never Python's salted hash(): ids
  must be the same in every process and every run, at training and at scoring.
  """
  return _mix(np.asarray(keys, np.uint64) ^ _U(_HASH_SEED))


def hash_token(token: bytes) -> int:
  """Stable 64-bit hash of any token: splitmix64 folded over its 8-byte words."""
  h = _HASH_SEED
  padded = token + b"\0" * (-len(token) % 8)
  for i in range(0, len(padded), 8):
    h = _mix_scalar(h ^ int.from_bytes(padded[i : i + 8], "little"))
  return h


def _mix_scalar(z: int) -> int:
  z = (z + _GOLDEN) & _M64
  z = ((z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9) & _M64
  z = ((z ^ (z >> 27)) * 0x94D0_49BB_1331_11EB) & _M64
  return z ^ (z >> 31)
