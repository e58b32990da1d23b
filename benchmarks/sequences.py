"""Behaviour sequences on planted data: attention vs mean pooling, shared vs own rows.

  python -m benchmarks.sequences [--rows 8000] [--seeds 3] [--epochs 4] [--record | --json OUT]

On `synthetic.write_history_csv` (the click rises with the number of history items
in the candidate's latent group: a target-dependent effect), one file per seed,
the four schemas of issue #35 (`synthetic.history_schema`): the history pooled by
mean or by target attention against item_id, on item_id's rows
(`share_embedding`) or with a vocabulary of its own. Each is trained with the tiny
preset (d=8, batch 256, lr 1e-2, one stage) and reported as valid / test AUC,
mean +- std over the seeds. tests/test_sequences.py's margin (attention + shared
against mean + own) comes from the runs of this script with its defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

from benchmarks import common
from gin_jax import config, runtime, training
from gin_jax.data import synthetic

VARIANTS = (("attention", True), ("attention", False), ("mean", True), ("mean", False))


def variant_name(pooling: str, shared: bool) -> str:
  return f"{pooling}, {'shared rows' if shared else 'own vocabulary'}"


def run(root: str, rows: int, seeds: int, epochs: int, variants=None) -> list[dict]:
  """Trains every variant on every seed's file under `root`; one dict a run."""
  runtime.init_runtime()
  out = []
  for seed in range(seeds):
    data = os.path.join(root, f"history_{seed}.csv")
    synthetic.write_history_csv(data, num_rows=rows, seed=seed)
    for pooling, shared in variants or VARIANTS:
      name = f"{pooling}_{'shared' if shared else 'own'}"
      schema = os.path.join(root, f"{name}.json")
      with open(schema, "w") as f:
        json.dump(synthetic.history_schema(pooling, shared=shared), f)
      cfg = config.override(config.tiny(), {
        "data.format": "csv", "data.train": data, "data.schema": schema, "data.min_count": "1",
        "model.embed_dim": "8", "train.batch_size": "256", "train.learning_rate": "1e-2",
        "train.epochs": str(epochs), "train.seed": str(seed), "train.stages": "single",
      })  # fmt: skip
      start = time.perf_counter()
      report = training.run(cfg, os.path.join(root, f"{name}_{seed}"), devices=jax.devices()[:1])
      stage = report["stages"]["train"]
      out.append({"pooling": pooling, "shared": shared, "seed": seed,
                  "valid_auc": stage["valid_auc"], "test_auc": stage["test_auc"],
                  "seconds": time.perf_counter() - start})  # fmt: skip
      print(f"  {variant_name(pooling, shared)}, seed {seed}: valid AUC "
            f"{stage['valid_auc']:.4f}", flush=True)  # fmt: skip
  return out


def summary(runs: list[dict]) -> list[dict]:
  """Mean +- std (over seeds) of each variant's valid and test AUC, in VARIANTS' order."""
  rows = []
  for pooling, shared in VARIANTS:
    mine = [r for r in runs if (r["pooling"], r["shared"]) == (pooling, shared)]
    if not mine:
      continue
    row = {"pooling": pooling, "shared": shared, "seeds": len(mine)}
    for key in ("valid_auc", "test_auc"):
      x = np.array([r[key] for r in mine])
      row[key], row[key + "_std"] = float(x.mean()), float(x.std())
    rows.append(row)
  return rows


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rows", type=int, default=8000, help="rows of each seed's file")
  p.add_argument("--seeds", type=int, default=3, help="seeds (one file and one run each)")
  p.add_argument("--epochs", type=int, default=4, help="epochs of each run")
  p.add_argument("--workdir-root", help="where the files and runs go (default: a temporary one)")
  common.add_output_flags(p, "sequences_synthetic.json")
  args = p.parse_args(argv)
  with tempfile.TemporaryDirectory(prefix="gin_sequences-") as tmp:
    root = args.workdir_root or tmp
    os.makedirs(root, exist_ok=True)
    runs = run(root, args.rows, args.seeds, args.epochs)
  rows = summary(runs)
  table = [
    [variant_name(r["pooling"], r["shared"]), f"{r['valid_auc']:.4f} +- {r['valid_auc_std']:.4f}",
     f"{r['test_auc']:.4f} +- {r['test_auc_std']:.4f}"]
    for r in rows
  ]  # fmt: skip
  print()
  print(common.markdown_table(["history pooled by", "valid AUC", "test AUC"], table))
  command = " ".join(
    ["python -m benchmarks.sequences", *(argv if argv is not None else sys.argv[1:])]
  )
  payload = {"command": command, "rows": args.rows, "seeds": args.seeds,
             "epochs": args.epochs, "summary": rows, "runs": runs,
             "backend": common.backend_info()}  # fmt: skip
  common.write_result(payload, args, "sequences_synthetic.json")
  return payload


if __name__ == "__main__":
  main()
