"""What averaging finished runs would give: each run's AUC/logloss on a split, and the
mean probability's.

  python -m benchmarks.seed_ensemble WORKDIR [WORKDIR ...] [--split valid] [--json OUT]
  python -m benchmarks.seed_ensemble --quality benchmarks/results/quality_NAME.json

The workdirs are `python -m train` (or benchmarks.quality) runs on the same data,
usually the same config with other seeds. Each one's delivered model (as scoring
picks it) scores the split its own config prepares; the splits must hold the same
rows in the same order, else it stops. Use --split valid while choosing settings
(the test split is for a finished configuration, once). `train.ensemble=K` is the
trainer's own form of this average: it trains the K models and delivers their mean
(a workdir of such a run scores here as its ensemble).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks import common
from gin_jax import data, metrics
from gin_jax.config import Config
from gin_jax.scoring import Scorer
from gin_jax.training.workdir import Workdir


def split_of(workdir: str, name: str) -> data.Split:
  """The prepared split `name` of a finished run (from its data cache)."""
  layout = Workdir(workdir)
  cfg = Config.from_dict(json.loads(layout.config.read_text()))
  _, splits = data.prepare(cfg.data, layout.data_cache, progress=False)
  return splits[name]


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="*", help="finished runs on the same data")
  parser.add_argument(
    "--quality", help="a benchmarks.quality JSON: its gin_jax runs' workdirs (not the floor's)"
  )
  parser.add_argument("--split", default="valid", choices=["train", "valid", "test"])
  parser.add_argument("--json", default=None, help="write the results here")
  args = parser.parse_args(argv)
  workdirs = list(args.workdirs)
  if args.quality:
    with open(args.quality) as f:
      quality_runs = json.load(f)["runs"]
    workdirs += sorted({r["workdir"] for r in quality_runs if r["model"] == "gin_jax"})
  if not workdirs:
    parser.error("give workdirs or --quality")
  labels, runs, probs = None, [], []
  for w in workdirs:
    split = split_of(w, args.split)
    y = np.asarray(split.labels)
    if labels is None:
      labels, lines = y, np.asarray(split.line_numbers)
    elif not (np.array_equal(y, labels) and np.array_equal(split.line_numbers, lines)):
      raise SystemExit(f"{w}: its {args.split} split holds other rows than {workdirs[0]}'s")
    p = Scorer.from_checkpoint(w).predict_split(split)
    probs.append(p)
    runs.append({"workdir": w, **metrics.evaluate(labels, p)})
  ensemble = metrics.evaluate(labels, np.mean(probs, axis=0))
  single = {k: float(np.mean([r[k] for r in runs])) for k in ("auc", "logloss")}
  payload = {
    "split": args.split, "rows": len(labels), "runs": runs, "mean_of_runs": single,
    "ensemble": ensemble,
  }  # fmt: skip
  rows = [[r["workdir"], f"{r['auc']:.4f}", f"{r['logloss']:.4f}"] for r in runs]
  rows.append(["mean of the runs", f"{single['auc']:.4f}", f"{single['logloss']:.4f}"])
  rows.append(
    ["**averaged probabilities**", f"{ensemble['auc']:.4f}", f"{ensemble['logloss']:.4f}"]
  )
  print(common.markdown_table(["run", f"{args.split} AUC", f"{args.split} logloss"], rows))
  if args.json:
    common.write_json(args.json, payload)
  return payload


if __name__ == "__main__":
  main()
