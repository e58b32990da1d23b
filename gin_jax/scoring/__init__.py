"""Scoring with trained models: the Scorer, export for serving, score files.

The split-prediction loop and the ensemble average are gin_jax.training.predict's,
shared with the trainer (scoring imports training, never the reverse).

scorer.py       Scorer: raw rows, files and prepared splits -> probabilities
predict.py      the one split-prediction loop (the trainer's too) and the ensemble average
checkpoints.py  the checkpoints a workdir delivers, restored for scoring
export.py       jax.export of the scoring function, numbered versions, loading it back
stream.py       score_file: a file scored in bounded memory, with exact metrics
writers.py      .csv / .npy / .parquet score outputs
"""

from gin_jax.scoring.checkpoints import LoadedCheckpoint, load_checkpoint, load_models
from gin_jax.scoring.errors import ScoringError
from gin_jax.scoring.export import (
  EXPORT_FILES,
  LoadedExport,
  export,
  export_version,
  load_export,
  read_export,
  versions,
)
from gin_jax.scoring.scorer import Scorer
from gin_jax.scoring.stream import ScoreSummary, score_file
from gin_jax.scoring.writers import write_scores

__all__ = [
  "EXPORT_FILES", "LoadedCheckpoint", "LoadedExport", "ScoreSummary", "Scorer", "ScoringError",
  "export", "export_version", "load_checkpoint", "load_export", "load_models", "read_export",
  "score_file", "versions", "write_scores",
]  # fmt: skip
