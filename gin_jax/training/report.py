"""Run outputs: metrics.jsonl lines, report.json, the |alpha| heatmap and the summary table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

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


def alpha_heatmap(
  path, alphas: dict, masks: dict | None, field_names: list[str], num_subspaces: int
) -> None:
  """PNG of |alpha| per layer (rows) and subspace (columns); kept pairs outlined.

  Args:
    path: output PNG path.
    alphas: `{interaction_<l>: [S, f, m]}` from the search stage.
    masks: the selected masks (same structure) or None.
    field_names: the f names (u axis; also the v axis of layer 1).
    num_subspaces: S, to name the v axis of deeper layers.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from gin_jax.models import layer_names
  from gin_jax.models.pruning import input_names

  names = layer_names(alphas)
  rows, cols = len(names), num_subspaces
  f = len(field_names)
  fig, axes = plt.subplots(
    rows, cols, figsize=(4.2 * cols, 4.2 * rows * (1 if f > 3 else 0.5)), squeeze=False
  )
  for layer, name in enumerate(names):
    a = np.abs(np.asarray(alphas[name], np.float32))
    v_names = input_names(layer, field_names, num_subspaces)
    for s in range(a.shape[0]):
      ax = axes[layer][s]
      im = ax.imshow(a[s], aspect="auto", cmap="viridis", interpolation="nearest")
      if masks is not None:
        u, v = np.nonzero(np.asarray(masks[name])[s])
        ax.scatter(v, u, s=4, c="red", marker="s", linewidths=0)
      ax.set_title(f"layer {layer + 1}, subspace {s}: |alpha|", fontsize=9)
      step = max(1, f // 13)
      ax.set_yticks(range(0, f, step), [field_names[i] for i in range(0, f, step)], fontsize=6)
      vstep = max(1, len(v_names) // 13)
      ax.set_xticks(range(0, len(v_names), vstep), v_names[::vstep], fontsize=6, rotation=90)
      ax.set_ylabel("u (B_0 field)", fontsize=7)
      ax.set_xlabel("v (B_{l-1} vector)", fontsize=7)
      fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  fig.suptitle("AOANet search stage |alpha|; red = kept after pruning", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


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
