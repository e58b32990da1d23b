"""gin_jax: AOANet / GIN (KDD'21) in JAX and Flax NNX.

The curated public API; everything else is reachable through its module:

  gin_jax.config    the dataclasses, presets and overrides
  gin_jax.models    GIN, the baselines, the interaction kernel, pruning
  gin_jax.data      preparation of click logs, the input pipeline
  gin_jax.training  the trainer: `training.run(cfg, workdir)`
  gin_jax.scoring   the Scorer, export, score files

Names other than the configs are imported on first use, so that `import
gin_jax` (and the command line's flag parsing) does not start jax.
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

_LAZY = {
  "GIN": "gin_jax.models",
  "ModelSpec": "gin_jax.models",
  "apply_model": "gin_jax.models",
  "init_state": "gin_jax.models",
  "generalized_interaction": "gin_jax.models",
  "Scorer": "gin_jax.scoring",
}

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
  if name in _LAZY:
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'gin_jax' has no attribute {name!r}")
