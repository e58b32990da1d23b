"""The error a training run stops with: one line for the user, exit 2 (gin_jax.runtime.fail)."""


class TrainingError(RuntimeError):
  """A run cannot continue (non-finite loss, mismatched workdir, ...)."""


class Interrupted(KeyboardInterrupt):
  """Ctrl-C (SIGINT) stopped a run at global step `step`; rerunning its command resumes."""

  def __init__(self, step: int):
    super().__init__(step)
    self.step = step
