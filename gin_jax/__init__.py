"""gin_jax: AOANet / GIN (KDD'21) in JAX and Flax NNX.

The curated public API; everything else is reachable through its module.
"""

from gin_jax.config import (
  Config,
  DataConfig,
  ModelConfig,
  TrainConfig,
  criteo_bars,
  criteo_paper,
  demo,
  preset,
  tiny,
)
from gin_jax.interaction import generalized_interaction
from gin_jax.model import GIN, ModelSpec, apply_model, init_state

__all__ = [
  "GIN",
  "Config",
  "DataConfig",
  "ModelConfig",
  "ModelSpec",
  "Scorer",
  "TrainConfig",
  "apply_model",
  "criteo_bars",
  "criteo_paper",
  "demo",
  "generalized_interaction",
  "init_state",
  "preset",
  "tiny",
]


def __getattr__(name):
  # Scorer pulls in the data pipeline and orbax; import it only when asked for.
  if name == "Scorer":
    from gin_jax.score import Scorer

    return Scorer
  raise AttributeError(name)
