"""The paper's baselines (section 4) and FM: one module per family.

base.py holds what they share (the projection, the deep part, the pair
products); the table of how each is a special case of the generalized
interaction is in base.py's docstring.
"""

from gin_jax.models.baselines.autoint import AutoInt
from gin_jax.models.baselines.base import Baseline, pair_indices, pair_products, strict_upper
from gin_jax.models.baselines.cross import DCN, DCNv2
from gin_jax.models.baselines.fm import AFM, FM, DeepFM, FwFM
from gin_jax.models.baselines.pnn import IPNN, OPNN
from gin_jax.models.baselines.xdeepfm import XDeepFM

__all__ = [
  "AFM", "DCN", "FM", "IPNN", "OPNN", "AutoInt", "Baseline", "DCNv2", "DeepFM", "FwFM", "XDeepFM",
  "pair_indices", "pair_products", "strict_upper",
]  # fmt: skip
