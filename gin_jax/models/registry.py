"""The models by `model.arch`: adding a model is one module and one line here."""

from __future__ import annotations

from flax import nnx

from gin_jax.config import ARCHS, PRUNABLE, ModelConfig  # noqa: F401 - PRUNABLE re-exported
from gin_jax.models import baselines
from gin_jax.models.gin import GIN
from gin_jax.models.linear import LogisticRegression


def _logistic_regression(cfg, num_fields, num_rows, padded_rows, *, rngs):
  del num_fields  # one weight per table row, whatever the fields
  return LogisticRegression(num_rows, padded_rows, cfg.embed_init_std, rngs=rngs)


# model.arch -> constructor (cfg, num_fields, num_rows, padded_rows, *, rngs).
MODELS = {
  "gin": GIN,
  "lr": _logistic_regression,
  "fm": baselines.FM,
  "deepfm": baselines.DeepFM,
  "ipnn": baselines.IPNN,
  "opnn": baselines.OPNN,
  "fwfm": baselines.FwFM,
  "afm": baselines.AFM,
  "dcn": baselines.DCN,
  "dcnv2": baselines.DCNv2,
  "xdeepfm": baselines.XDeepFM,
  "autoint": baselines.AutoInt,
}
assert tuple(MODELS) == ARCHS, "gin_jax.config.ARCHS and the registry must list the same models"


def build(
  cfg: ModelConfig, num_fields: int, num_rows: int, padded_rows: int, *, rngs: nnx.Rngs
) -> nnx.Module:
  """The model named by `cfg.arch`.

  Args:
    cfg: the model config; `cfg.arch` is a key of MODELS.
    num_fields: f, fields per example.
    num_rows: real rows of the stacked table.
    padded_rows: rows after padding to a multiple of the device count.
    rngs: parameter initialisation.

  Returns:
    The NNX module (used functionally: see gin_jax.models.state).
  """
  return MODELS[cfg.arch](cfg, num_fields, num_rows, padded_rows, rngs=rngs)
