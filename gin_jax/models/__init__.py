"""The models: GIN / AOANet, the linear floor and the paper's baselines.

registry.py     `build(cfg)` and MODELS, keyed by model.arch
interaction.py  the generalized interaction kernel (einsum over subspaces)
layers.py       the projection (embedding rows, target attention) and the deep MLP every
                model shares
gin.py          GIN's interaction layers and the GIN model
linear.py       the logistic regression
baselines/      FM, DeepFM, FwFM, AFM, IPNN, OPNN, DCN, DCN-M, xDeepFM, AutoInt
pruning.py      AOANet's select step: the masks over alpha
state.py        the functional use: ModelSpec, init / apply on plain pytrees
"""

from gin_jax.models.gin import GIN, InteractionLayer, layer_name, layer_names
from gin_jax.models.interaction import generalized_interaction
from gin_jax.models.layers import MLP, FieldProjection, TargetAttention, embed_rows
from gin_jax.models.registry import MODELS, PRUNABLE, build
from gin_jax.models.state import (
  TABLE_ROWS,
  ModelSpec,
  abstract_state,
  alpha_tree,
  apply_model,
  apply_on_rows,
  count_params,
  dense_params,
  init_state,
  logical_axes,
  padded_table_rows,
  row_tables,
  with_alpha,
  with_row_tables,
)

__all__ = [
  "GIN", "MLP", "MODELS", "PRUNABLE", "TABLE_ROWS", "FieldProjection", "InteractionLayer",
  "TargetAttention", "ModelSpec", "abstract_state", "alpha_tree", "apply_model",
  "apply_on_rows", "build",
  "count_params", "dense_params", "embed_rows", "generalized_interaction", "init_state",
  "layer_name", "layer_names", "logical_axes", "padded_table_rows", "row_tables", "with_alpha",
  "with_row_tables",
]  # fmt: skip
