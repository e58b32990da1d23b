"""Typed, frozen configuration for models, data and training, plus named presets.

Every field can be overridden from the command line (see gin_jax.cli) as
`--section.field=value`, e.g. `--model.num_subspaces=4 --train.batch_size=2048`.
Overrides go through `dataclasses.replace`, so presets stay immutable.

  schema.py     the dataclasses and each field's allowed values
  overrides.py  `--section.field=value` text and experiment files (YAML / JSON)
  presets.py    the named presets
"""

from gin_jax.config.overrides import field_names, load_file, override
from gin_jax.config.presets import (
  PRESETS,
  criteo_bars,
  criteo_paper,
  criteo_x1,
  default,
  demo,
  frappe,
  frappe_x1,
  preset,
  tiny,
)
from gin_jax.config.schema import (
  ARCH_DEFAULTS,
  ARCHS,
  ATTENTION_MISSING,
  BAD_ROWS,
  DEVICE_RESIDENT,
  EMBEDDING_OPTIMIZERS,
  FORMATS,
  INTERACTION_IMPLS,
  L2_PRIOR,
  MAX_VALUES,
  NUMERIC_MODES,
  PRUNABLE,
  PRUNE_SCOPES,
  READOUTS,
  STAGE_PLAN_ALIASES,
  STAGE_PLANS,
  Config,
  DataConfig,
  ModelConfig,
  TrainConfig,
  auto_batch_size,
  auto_embedding_l2,
  resolve_auto,
)

__all__ = [
  "ARCHS", "ARCH_DEFAULTS", "ATTENTION_MISSING", "BAD_ROWS", "DEVICE_RESIDENT",
  "EMBEDDING_OPTIMIZERS", "FORMATS",
  "INTERACTION_IMPLS", "L2_PRIOR", "MAX_VALUES", "NUMERIC_MODES", "PRESETS", "PRUNABLE",
  "PRUNE_SCOPES", "READOUTS", "STAGE_PLANS", "STAGE_PLAN_ALIASES", "Config", "DataConfig",
  "ModelConfig", "TrainConfig", "auto_batch_size", "auto_embedding_l2", "criteo_bars",
  "criteo_paper", "criteo_x1", "default", "demo", "field_names", "frappe", "frappe_x1", "load_file",
  "override",
  "preset", "resolve_auto", "tiny",
]  # fmt: skip
