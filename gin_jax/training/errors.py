"""The error a training run stops with: one line for the user, exit 2 (gin_jax.runtime.fail)."""


class TrainingError(RuntimeError):
  """A run cannot continue (non-finite loss, mismatched workdir, ...)."""
