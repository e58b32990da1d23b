"""A run's report as pictures and one page: learning curves, a reliability diagram, the
|alpha| heatmap, and WORKDIR/summary.md linking them.

matplotlib is the `plots` extra (`pip install 'gin-jax[plots]'`). Without it a run
says once how to get the pictures and writes everything else, summary.md included.
Plotting stays cheap, for the many tiny runs of the test suite: one figure per
file, drawn by matplotlib.figure.Figure straight onto Agg (no pyplot: no display,
no figure registry to import or close), fixed margins where the labels are known
(tight_layout measured every label, 0.1-0.2 s a figure), 100 dpi.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from gin_jax import files, runtime
from gin_jax.training.report import summary_table

DPI = 100
INSTALL = "pip install 'gin-jax[plots]'"
_said = False  # whether this process has said that matplotlib is missing


def figure(**kwargs):
  """A matplotlib Figure (kwargs: figsize, ...) to draw on and savefig, or None (said
  once) when matplotlib is not installed."""
  global _said
  try:
    import matplotlib  # noqa: F401 - the extra's presence, before any of its modules
    from matplotlib.figure import Figure
  except ImportError:
    if not _said:
      _said = True
      runtime.log(f"plots skipped: matplotlib is not installed ({INSTALL} draws them)")
    return None
  return Figure(**kwargs)


# ---------------------------------------------------------------------- the figures


def learning_curves(path, records: list[dict], delivered: str | None = None) -> bool:
  """PNG of train loss, validation AUC and validation logloss against the global step,
  coloured by stage (metrics.jsonl's records); False without matplotlib or records.

  Each stage's epochs are marked on the validation panels; the delivered stage's
  line is drawn thicker.
  """
  losses = [r for r in records if "loss" in r and "step" in r]
  evals = [r for r in records if r.get("event") == "eval" and r.get("split") == "valid"]
  fig = figure(figsize=(12, 3.4)) if losses or evals else None
  if fig is None:
    return False
  order = list(dict.fromkeys(r["stage"] for r in losses + evals))
  colour = {stage: f"C{i}" for i, stage in enumerate(order)}
  panels = [("train loss", losses, "loss"), ("valid AUC", evals, "auc")]
  panels.append(("valid logloss", evals, "logloss"))
  axes = fig.subplots(1, 3)
  for ax, (title, rows, key) in zip(axes, panels):
    for stage in order:
      points = [(r["step"], r[key]) for r in rows if r["stage"] == stage and r.get(key) is not None]
      if not points:
        continue
      x, y = zip(*points)
      marker = "o" if rows is evals else None
      width = 2.2 if stage == delivered else 1.2
      label = f"{stage} (delivered)" if stage == delivered else stage
      ax.plot(x, y, color=colour[stage], marker=marker, ms=4, lw=width, label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("global step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  if axes[0].get_legend_handles_labels()[0]:  # no loss lines: no legend (nor its warning)
    axes[0].legend(fontsize=7)
  fig.suptitle("learning curves (validation points: each epoch's end)", fontsize=10)
  fig.subplots_adjust(left=0.05, right=0.99, bottom=0.15, top=0.83, wspace=0.2)
  fig.savefig(path, dpi=DPI)
  return True


def reliability_diagram(path, calibration: dict | None) -> bool:
  """PNG of observed click rate against mean predicted probability per bin (the diagonal
  is perfect calibration), over a histogram of the predictions; False without
  matplotlib or bins."""
  fig = figure(figsize=(4.6, 5.2)) if calibration and calibration.get("bins") else None
  if fig is None:
    return False
  bins = calibration["bins"]
  top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
  top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
  predicted = [b["mean_predicted"] for b in bins]
  observed = [b["observed_rate"] for b in bins]
  top.plot(predicted, observed, marker="o", color="C0", label="model")
  top.set_ylabel("observed click rate", fontsize=8)
  top.set_xlim(0, 1)
  top.set_ylim(0, 1)
  top.legend(fontsize=7, loc="upper left")
  top.grid(alpha=0.3)
  top.tick_params(labelsize=7)
  top.set_title(
    f"{calibration.get('stage', '')} on {calibration.get('split', '')}: ECE "
    f"{calibration['ece']:.4f}\nmean predicted {calibration['mean_predicted']:.4f}, "
    f"observed {calibration['observed_rate']:.4f}",
    fontsize=8,
  )
  bottom.bar(
    [(b["lo"] + b["hi"]) / 2 for b in bins],
    [b["n"] for b in bins],
    width=[b["hi"] - b["lo"] for b in bins],
    color="C0",
    alpha=0.6,
  )
  bottom.set_xlabel("predicted probability", fontsize=8)
  bottom.set_ylabel("rows", fontsize=8)
  bottom.tick_params(labelsize=7)
  fig.subplots_adjust(left=0.15, right=0.96, bottom=0.09, top=0.91, hspace=0.06)
  fig.savefig(path, dpi=DPI)
  return True


def alpha_heatmap(
  path, alphas: dict, masks: dict | None, field_names: list[str], num_subspaces: int
) -> bool:
  """PNG of |alpha| per layer (rows) and subspace (columns); kept pairs marked in red.

  Args:
    path: output PNG path.
    alphas: `{interaction_<l>: [S, f, m]}` from the search stage.
    masks: the selected masks (same structure) or None.
    field_names: the f names (u axis; also the v axis of layer 1).
    num_subspaces: S, to name the v axis of deeper layers.

  Returns:
    False without matplotlib.
  """
  from gin_jax.models import layer_names
  from gin_jax.models.pruning import input_names

  names = layer_names(alphas)
  rows, cols = len(names), num_subspaces
  f = len(field_names)
  fig = figure(figsize=(4.2 * cols, 4.2 * rows * (1 if f > 3 else 0.5)))
  if fig is None:
    return False
  axes = fig.subplots(rows, cols, squeeze=False)
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
  fig.tight_layout()  # the field names' lengths are the data's
  fig.savefig(path, dpi=DPI)
  return True


# ---------------------------------------------------------------------- the page


FIGURES = {  # report.json "figures" key -> (file in the workdir, what it shows)
  "learning_curves": ("learning_curves.png", "Learning curves"),
  "reliability": ("reliability.png", "Calibration on test (reliability diagram)"),
  "alpha_heatmap": ("alpha_heatmap.png", "|alpha| of the search stage, kept pairs in red"),
}
SUMMARY_PAGE = "summary.md"


def publish(root, out: dict, source=None) -> dict:
  """Draws the run's figures into `root` and writes root/summary.md; `out` with
  "figures" (report.json's list: key -> path relative to `root`) and "summary_page".

  Args:
    root: the workdir whose report `out` is.
    out: its report (stages, delivered_stage, calibration, ...).
    source: the workdir of the delivered model (beat_linear's from_linear, say),
      whose training the curves and heatmap show; default `root`.
  """
  root = Path(root)
  source = Path(source or root)
  figures = {}
  curves = root / FIGURES["learning_curves"][0]
  if learning_curves(curves, _records(source / "metrics.jsonl"), out.get("delivered_stage")):
    figures["learning_curves"] = curves.name
  reliability = root / FIGURES["reliability"][0]
  if reliability_diagram(reliability, out.get("calibration")):
    figures["reliability"] = reliability.name
  heatmap = source / FIGURES["alpha_heatmap"][0]
  if heatmap.exists():
    figures["alpha_heatmap"] = os.path.relpath(heatmap, root)
  out = {**out, "figures": figures, "summary_page": SUMMARY_PAGE}
  write_summary(root / SUMMARY_PAGE, out)
  return out


def write_summary(path, out: dict) -> None:
  """The run's Markdown page: what it delivers, the metrics table, calibration, pairs and
  the figures (or how to get them)."""
  cfg = out.get("config", {})
  lines = [f"# Run {cfg.get('name', '')}", ""]
  delivered = out.get("delivered_stage")
  if isinstance(delivered, list):  # an ensemble whose members deliver different stages
    what = f"each ensemble member's best stage ({', '.join(delivered)})"
  else:
    what = f"the **{delivered}** stage's model"
  if delivered:
    lines += [f"Delivered: {what} (`report.json`: `delivered_stage`).", ""]
  lines += [summary_table(out), ""]
  c = out.get("calibration")
  if c and c.get("ece") is not None:
    lines += [
      f"Calibration of the delivered model on {c['split']}: ECE {c['ece']:.4f}; mean "
      f"predicted {c['mean_predicted']:.4f} against an observed rate of "
      f"{c['observed_rate']:.4f}.",
      "",
    ]
  for key, (_, title) in FIGURES.items():
    if key in out.get("figures", {}):
      lines += [f"## {title}", "", f"![{title}]({out['figures'][key]})", ""]
  if not out.get("figures"):
    lines += [f"(No figures: matplotlib is not installed; `{INSTALL}` draws them.)", ""]
  lines += ["Every number: `report.json`; every step and evaluation: `metrics.jsonl`.", ""]
  with files.atomic_open(path, "w") as f:
    f.write("\n".join(lines))


def _records(path: Path) -> list[dict]:
  try:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  except (OSError, ValueError):
    return []
