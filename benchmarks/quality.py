"""Model quality on real click logs: N seeds, mean +- std, next to a logistic-regression floor.

  python -m benchmarks.quality --name frappe --format libfm \\
      --train frappe.validation.libfm --split 0.9,0.1 --test frappe.test.libfm
  python -m benchmarks.quality --name criteo_sample --train train.tsv --split 0.9,0.1 \\
      --test test.tsv --preset criteo_x1 --seeds 5 --model.num_subspaces=4

The data and model flags are exactly `python -m train`'s (same preset defaults,
same `--section.field=value` overrides), so a figure here is what that command
gives. Every seed trains on the same rows (data.seed stays fixed; train.seed
varies). The floor is `gin_jax.config.linear_floor` of the config:
`model.arch=lr` (one weight per category, the same table and trainer, Adam
1e-2, no L2) trained on the same rows by the same tool.

Each run keeps its workdir under --workdir-root (keyed by its config): a rerun
reuses finished runs, so an interrupted study resumes. The data is prepared
once per study and shared by its runs. `--hide-test` leaves
the test columns out of the printout and the JSON, for tuning on validation
only. Results: a markdown table on stdout; JSON with --record (benchmarks/results/) or --json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from benchmarks import common
from gin_jax.cli import build_parser, split_overrides

METRICS = ("valid_auc", "valid_logloss", "test_auc", "test_logloss")


def parse(argv):
  p = build_parser("python -m benchmarks.quality", __doc__.split("\n\n")[0])
  p.add_argument("--name", required=True, help="label of this study (file names, tables)")
  p.add_argument("--seeds", type=int, default=3, help="train.seed = 0 .. N-1 (default 3)")
  p.add_argument("--workdir-root", default=os.path.join("/tmp", "gin_quality"))
  p.add_argument("--no-floor", action="store_true", help="skip the logistic-regression floor")
  p.add_argument("--hide-test", action="store_true", help="report validation metrics only")
  common.add_devices_flag(p)
  common.add_output_flags(p, "quality_<name>.json")
  args, rest = p.parse_known_args(argv)
  return args, split_overrides(p, rest)


def _run_key(cfg) -> str:
  # Without train.ensemble: the trainer grows or shrinks a run's ensemble in
  # place, training only the members it lacks.
  cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ensemble=1))
  return hashlib.sha256(cfg.to_json().encode()).hexdigest()[:12]


def run_seed(
  cfg,
  label: str,
  seed: int,
  root: Path,
  *,
  data_cache: Path | None = None,
  prefix: str = "",
  devices: int | None = None,
) -> list[dict]:
  """Trains cfg with train.seed = `seed`, or reuses that finished run; one row per stage.

  The workdir is keyed by the run's config, so a finished run is read back from
  its report.json and an interrupted one resumes from its last checkpoint.

  Args:
    cfg: the config (its train.seed is replaced).
    label: the row's "model" and the workdir's prefix.
    seed: train.seed.
    root: where the workdirs live.
    data_cache: a prepared-data directory shared by every run (linked into each
      workdir), so that the data is prepared once; None: one per workdir.
    prefix: printed before the progress line (e.g. "[3/12] ").
    devices: train on this process's first N devices (None: every device; the
      workdir's key does not depend on it: runs compare across meshes).

  Returns:
    [{"model", "seed", "stage", "workdir", "seconds", "reused", *METRICS, "epochs"}].
  """
  from gin_jax import training

  run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
  workdir = root / f"{label}-{_run_key(run_cfg)}"
  report = _finished_report(workdir, run_cfg)
  reused = report is not None
  if reused:
    print(
      f"{prefix}{label} seed {seed}: finished earlier in {workdir}", file=sys.stderr, flush=True
    )
  else:
    workdir.mkdir(parents=True, exist_ok=True)
    if data_cache is not None and not (workdir / "data" / "cache").exists():
      Path(data_cache).mkdir(parents=True, exist_ok=True)
      (workdir / "data").mkdir(exist_ok=True)
      (workdir / "data" / "cache").symlink_to(Path(data_cache).resolve(), target_is_directory=True)
    print(f"{prefix}{label} seed {seed}: {workdir}", file=sys.stderr, flush=True)
    with open(workdir / "quality.log", "a") as log:
      with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        report = training.run(run_cfg, workdir, devices=common.local_devices(devices))
  delivered = report.get("delivered_stage")
  return [
    {"model": label, "seed": seed, "stage": stage, "workdir": str(workdir),
     "seconds": result.get("seconds"), "reused": reused, "delivered": stage == delivered,
     **{k: result.get(k) for k in (*METRICS, "epochs")}}
    for stage, result in report["stages"].items()
  ]  # fmt: skip


def run_seeds(
  cfg, label: str, seeds: int, root: Path, data_cache: Path | None = None, devices=None
) -> list[dict]:
  """run_seed for train.seed = 0 .. seeds-1 (reusing finished runs); all their rows."""
  return [
    row
    for seed in range(seeds)
    for row in run_seed(cfg, label, seed, root, data_cache=data_cache, devices=devices)
  ]


def _finished_report(workdir: Path, cfg) -> dict | None:
  """The report.json of a finished run of exactly `cfg` in workdir, else None."""
  try:
    report = json.loads((workdir / "report.json").read_text())
    asked = json.loads((workdir / "config.json").read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return None
  # config.json holds the config as asked for (the report's has the data-dependent
  # settings decided).
  if asked != cfg.to_dict():
    return None
  # A beat_linear run writes report.json once before its regression check, an
  # ensemble once per member before the average (and a run whose ensemble grows
  # keeps the smaller one's report until the new members are done).
  if cfg.train.beat_linear and "beat_linear" not in report:
    return None
  members = len(report.get("ensemble", [None]))
  return report if members == cfg.train.ensemble else None


def summarise(rows: list[dict]) -> list[dict]:
  """Mean and std (ddof=1) over seeds for every (model, stage)."""
  out = []
  for key in dict.fromkeys((r["model"], r["stage"]) for r in rows):
    group = [r for r in rows if (r["model"], r["stage"]) == key]
    entry = {"model": key[0], "stage": key[1], "seeds": len(group)}
    for m in (*METRICS, "epochs"):
      values = np.array([r[m] for r in group if r.get(m) is not None], np.float64)
      if len(values):
        entry[m] = float(values.mean())
        entry[m + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    out.append(entry)
  return out


def table(summary: list[dict], hide_test: bool) -> str:
  metrics = [m for m in METRICS if not (hide_test and m.startswith("test"))]
  rows = []
  for s in summary:
    cells = [
      f"{s[m]:.4f} +- {s[m + '_std']:.4f}" if m in s else "-" for m in metrics
    ]  # fmt: skip
    rows.append([s["model"], s["stage"], *cells, f"{s.get('epochs', 0):.1f}", s["seeds"]])
  return common.markdown_table(["model", "stage", *metrics, "epochs", "seeds"], rows)


def main(argv=None) -> dict:
  args, overrides = parse(sys.argv[1:] if argv is None else argv)
  from gin_jax import cli, runtime
  from gin_jax.training import recipes

  runtime.init_runtime()
  import jax

  # Seeds and floor runs compile the same steps: keep the executables across runs.
  jax.config.update("jax_compilation_cache_dir", str(Path(args.workdir_root) / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  cfg = cli.build_config(args, overrides)
  root = Path(args.workdir_root) / args.name
  cache = root / "data_cache"  # every run reads the same prepared data
  rows = run_seeds(cfg, "gin_jax", args.seeds, root, cache, args.devices)
  if not args.no_floor:
    floor = recipes.linear_floor(cfg)
    rows += run_seeds(floor, "logistic_regression", args.seeds, root, cache, args.devices)
  if args.hide_test:
    rows = [{k: v for k, v in r.items() if not k.startswith("test")} for r in rows]
  summary = summarise(rows)
  print(table(summary, args.hide_test))
  payload = {
    "name": args.name,
    "command": "python -m benchmarks.quality " + " ".join(sys.argv[1:] if argv is None else argv),
    "config": cfg.to_dict(),
    "floor_config": None if args.no_floor else floor.to_dict(),
    "summary": summary,
    "runs": rows,
    "backend": common.backend_info(),
  }
  common.write_result(payload, args, f"quality_{args.name}.json")
  return payload


if __name__ == "__main__":
  main()
