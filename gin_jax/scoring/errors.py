"""The error scoring stops with: one line for the user, exit 2 (gin_jax.runtime.fail)."""


class ScoringError(RuntimeError):
  """A checkpoint or export directory that cannot be used, with the reason."""
