"""Run outputs: metrics.jsonl lines and the summary table (the figures: training/plots.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from gin_jax import files


class MetricsLog:
  """Appends one JSON object per line to WORKDIR/metrics.jsonl (process 0 only).

  `scalars`, if given, also gets every record (tensorboard.ScalarWriter).
  """

  def __init__(self, path: str | os.PathLike, enabled: bool = True, scalars=None):
    self.path = Path(path)
    self.enabled = enabled
    self.scalars = scalars

  def write(self, **record) -> None:
    if not self.enabled:
      return
    try:
      with self.path.open("a") as f:
        f.write(json.dumps(files.jsonable(record)) + "\n")
    except OSError as e:  # e.g. a full disk: name the file (a failed write does not)
      raise OSError(e.errno, e.strerror, str(self.path)) from None
    if self.scalars is not None:
      self.scalars(record)

  def close(self) -> None:
    """Closes the TensorBoard file, so that the run's files are final when it returns
    (collected later, its last bytes landed after a caller had read the workdir)."""
    if self.scalars is not None:
      self.scalars.close()

  def size(self) -> int | None:
    """Bytes written so far (what a checkpoint records); None where disabled."""
    if not self.enabled:
      return None
    return self.path.stat().st_size if self.path.exists() else 0

  def rewind(self, size: int | None, step: int) -> None:
    """Forgets the lines written after a checkpoint, which a resumed run replays.

    Args:
      size: the log's size when the checkpoint was saved (`size()`), or None for
        a checkpoint that did not record it: then every line after global step
        `step` goes.
      step: the checkpoint's global step.
    """
    if not self.enabled or not self.path.exists():
      return
    if size is not None:
      if self.path.stat().st_size > size:
        with self.path.open("r+b") as f:
          f.truncate(size)
      return
    lines = self.path.read_text().splitlines(keepends=True)
    keep = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(keep) < len(lines):
      self.path.write_text("".join(keep))


def summary_table(report: dict) -> str:
  """A markdown table of per-stage metrics plus the pruning facts."""
  grouped = any("valid_gauc" in r or "test_gauc" in r for r in report["stages"].values())
  columns = [("valid AUC", "valid_auc"), ("valid gAUC", "valid_gauc"), ("valid logloss",
             "valid_logloss"), ("test AUC", "test_auc"), ("test gAUC", "test_gauc"),
             ("test logloss", "test_logloss"), ("test ECE", "test_ece")]  # fmt: skip
  columns = [c for c in columns if grouped or "gauc" not in c[1]]
  lines = [
    "| stage | " + " | ".join(name for name, _ in columns) + " | epochs | seconds |",
    "|---" * (len(columns) + 3) + "|",
  ]

  def fmt(x):
    return "-" if x is None else f"{x:.4f}"

  delivered = report.get("delivered_stage")
  for stage, r in report["stages"].items():
    name = f"**{stage}** (delivered)" if stage == delivered and len(report["stages"]) > 1 else stage
    cells = " | ".join(fmt(r.get(key)) for _, key in columns)
    lines.append(f"| {name} | {cells} | {r.get('epochs', '-')} | {r.get('seconds', 0):.0f} |")
  if grouped:
    by = report.get("config", {}).get("train", {}).get("group_by")
    lines.append("")
    lines.append(f"gAUC: the AUC within each {by} group, averaged weighted by rows "
                 "(groups of one class skipped)")  # fmt: skip
  if report.get("ensemble"):
    members = report["ensemble"]
    final = list(report["stages"])[-1]
    aucs = [m["stages"][final].get("valid_auc") for m in members]
    lines.append("")
    lines.append(
      f"the average of {len(members)} models (train.seed "
      f"{', '.join(str(m['seed']) for m in members)}); their own {final} valid AUC: "
      + ", ".join(fmt(a) for a in aucs)
    )
    if report.get("kept_pairs_votes"):
      votes = report["kept_pairs_votes"]
      every = [v for v in votes if v["members"] == len(members)]
      lines.append(
        f"{len(every)} layer-1 field pairs kept by all {len(members)} models, "
        f"{len(votes)} by at least one (kept_pairs_votes; kept_pairs are the first model's)"
      )
  if report.get("kept_pairs") is not None:
    lines.append("")
    lines.append(
      f"kept {report['kept_fraction']:.0%} of alpha entries; "
      f"{len(report['kept_pairs'])} distinct layer-1 field pairs"
    )
  if report.get("planted_pair_recall") is not None:
    ranks = ", ".join(
      f"{'x'.join(r['pair'])}: rank {r['rank']}/{r['of']}" for r in report["planted_pair_ranks"]
    )
    lines.append(
      f"planted-pair recall: {report['planted_pair_recall']:.2f} "
      f"(chance: {report['planted_pair_chance']:.2f}); {ranks}"
    )
  return "\n".join(lines)
