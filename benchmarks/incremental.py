"""Continued training against retraining, on a log that drifts day by day (issue #23).

  python -m benchmarks.incremental                      # synthetic days, 3 seeds
  python -m benchmarks.incremental --days d1.csv d2.csv d3.csv --format csv \\
      --schema schema.yaml --name movielens_periods     # a real time-ordered log

Three days A, B, C. Every model is tested on day C (data.test); each trains on
its own file with a 90/10 train/validation split. Per seed:

  day1_model         trained on A from nothing: the model yesterday delivered (a)
  continued          `--init-from` the day1 model, trained on B (one stage)
  scratch_day2       trained on B from nothing (b)
  scratch_days1+2    trained on A and B together from nothing (c)

The synthetic days come from SyntheticSpec(day, drift): the planted pairs
persist, each day brings ids the day before never saw and retires the least
recent. The data and model flags are `python -m train`'s (default --preset
demo). Reported: day-C test AUC and logloss (mean +- std over seeds) and the
training seconds of each model (the sum of its stages). Runs are kept under
--workdir-root and reused when rerun. JSON with --record (benchmarks/results/) or --json.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

from benchmarks import common, quality
from gin_jax import config as config_lib
from gin_jax.cli import build_parser, split_overrides

MODELS = ("day1_model", "continued", "scratch_day2", "scratch_days1+2")


def parse(argv):
  p = build_parser("python -m benchmarks.incremental", __doc__.split("\n\n")[0])
  p.add_argument("--name", default="synthetic_drift", help="label of this study (file names)")
  p.add_argument("--days", nargs=3, metavar="FILE", help="days A B C (default: synthetic)")
  p.add_argument("--seeds", type=int, default=3, help="train.seed = 0 .. N-1 (default 3)")
  p.add_argument("--rows", default="40000",
                 help="synthetic rows a day: one count, or A,B,C (e.g. 40000,13333,40000: a "
                 "small day B, as a daily retrain sees it)")  # fmt: skip
  p.add_argument(
    "--variant", action="append", default=[], metavar="NAME:FIELD=VALUE,...",
    help="also continue with these config overrides, as the model continued_NAME (repeat "
    "for several; e.g. lr01:train.init_lr_scale=0.1,train.init_epochs=1)",
  )  # fmt: skip
  p.add_argument("--max-vocab", type=int, default=3000, help="synthetic: largest vocabulary")
  p.add_argument("--drift", type=float, default=0.15, help="synthetic: new ids a day (fraction)")
  p.add_argument(
    "--valid-newest", type=float, default=0.0, metavar="F",
    help="validate each model on the newest F of its training file (by line order: the "
    "file is time-ordered) instead of a random 10%% of it",
  )  # fmt: skip
  p.add_argument("--workdir-root", default=os.path.join("/tmp", "gin_incremental"))
  common.add_devices_flag(p)
  common.add_output_flags(p, "incremental_<name>.json")
  args, rest = p.parse_known_args(argv)
  if args.preset is None:
    args.preset = "demo"
  return args, split_overrides(p, rest)


def synthetic_days(root: Path, rows, max_vocab: int, drift: float) -> list[Path]:
  """Days 0-2 of a drifting synthetic log as Criteo TSV files under root (written once).

  `rows`: the rows of every day, or a list of three (a day each).
  """
  from gin_jax.data import synthetic

  root.mkdir(parents=True, exist_ok=True)
  per_day = [rows] * 3 if isinstance(rows, int) else list(rows)
  out = []
  for day in range(3):
    path = root / f"day{day}-{per_day[day]}-{max_vocab}-{drift}.tsv"
    if not path.exists():
      spec = synthetic.SyntheticSpec(
        num_rows=per_day[day], max_vocab=max_vocab, seed=0, day=day, drift=drift
      )
      tmp = path.with_suffix(".tmp")
      synthetic.write_criteo_tsv(tmp, spec)
      tmp.rename(path)
    out.append(path)
  return out


def newest_cut(path: Path, fraction: float, root: Path, has_header: bool) -> tuple[Path, Path]:
  """(oldest 1 - fraction of a time-ordered file's rows, its newest fraction), written once."""
  train, valid = root / f"{path.stem}-old{fraction:g}{path.suffix}", root / (
    f"{path.stem}-new{fraction:g}{path.suffix}")  # fmt: skip
  if not valid.exists():
    root.mkdir(parents=True, exist_ok=True)
    lines = path.read_bytes().splitlines(keepends=True)
    header, rows = (lines[:1], lines[1:]) if has_header else ([], lines)
    cut = len(rows) - round(len(rows) * fraction)
    for out, part in ((train, rows[:cut]), (valid, rows[cut:])):
      tmp = out.with_suffix(".tmp")
      tmp.write_bytes(b"".join(header + part))
      tmp.rename(out)
  return train, valid


def joined(a: Path, b: Path, root: Path, has_header: bool) -> Path:
  """Days A and B as one file (B's header line dropped), written once."""
  path = root / f"joined-{a.stem}-{b.stem}{a.suffix}"
  if not path.exists():
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out, open(a, "rb") as fa, open(b, "rb") as fb:
      out.write(fa.read())
      if has_header:
        fb.readline()
      out.write(fb.read())
    tmp.rename(path)
  return path


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  args, overrides = parse(argv)
  from gin_jax import cli, runtime

  runtime.init_runtime()
  import jax

  root = Path(args.workdir_root) / args.name
  jax.config.update("jax_compilation_cache_dir", str(Path(args.workdir_root) / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  if args.days:
    days = [Path(d).resolve() for d in args.days]
  else:
    rows = [int(r) for r in args.rows.split(",")]
    days = synthetic_days(root / "days", rows[0] if len(rows) == 1 else rows, args.max_vocab,
                          args.drift)  # fmt: skip
    overrides = {"data.format": "criteo", **overrides}
  base = cli.build_config(args, overrides)
  has_header = base.data.format == "csv"
  both = joined(days[0], days[1], root / "days", has_header)

  def on(train: Path, **train_opts):
    data = dataclasses.replace(base.data, train=str(train), valid=None, test=str(days[2]))
    data = dataclasses.replace(data, split=(0.9, 0.1))
    if args.valid_newest:
      old, new = newest_cut(train, args.valid_newest, root / "days", has_header)
      data = dataclasses.replace(data, train=str(old), valid=str(new), split=(1.0, 0.0))
    return dataclasses.replace(base, data=data, train=dataclasses.replace(base.train, **train_opts))

  variants = [parse_variant(v) for v in args.variant]
  rows = []
  for seed in range(args.seeds):
    first = quality.run_seed(on(days[0]), "day1_model", seed, root, devices=args.devices)
    rows += first
    continued = on(days[1], init_from=first[0]["workdir"], stages="single")
    rows += quality.run_seed(continued, "continued", seed, root, devices=args.devices)
    for name, fields in variants:
      variant = config_lib.override(continued, fields)
      rows += quality.run_seed(variant, f"continued_{name}", seed, root, devices=args.devices)
    rows += quality.run_seed(on(days[1]), "scratch_day2", seed, root, devices=args.devices)
    rows += quality.run_seed(on(both), "scratch_days1+2", seed, root, devices=args.devices)
  models = [*MODELS[:2], *(f"continued_{n}" for n, _ in variants), *MODELS[2:]]
  summary = summarise(rows, models)
  headers = ["model", "valid AUC", "day-C test AUC", "day-C test logloss", "train seconds",
             "seeds"]  # fmt: skip
  print(common.markdown_table(headers, [
    [s["model"], f"{s['valid_auc']:.4f} +- {s['valid_auc_std']:.4f}",
     f"{s['test_auc']:.4f} +- {s['test_auc_std']:.4f}",
     f"{s['test_logloss']:.4f} +- {s['test_logloss_std']:.4f}",
     f"{s['seconds']:.0f} +- {s['seconds_std']:.0f}", s["seeds"]]
    for s in summary
  ]))  # fmt: skip
  payload = {
    "name": args.name,
    "command": "python -m benchmarks.incremental " + " ".join(argv),
    "days": [str(d) for d in days],
    "config": base.to_dict(),
    "summary": summary,
    "runs": rows,
    "backend": common.backend_info(),
  }
  common.write_result(payload, args, f"incremental_{args.name}.json")
  return payload


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
  """'NAME:field=value,field=value' -> (NAME, {field: value})."""
  name, _, fields = text.partition(":")
  pairs = [f.split("=", 1) for f in fields.split(",") if f]
  if not name or any(len(p) != 2 for p in pairs):
    raise SystemExit(f"--variant {text!r}: expected NAME:section.field=value,...")
  return name, dict(pairs)


def summarise(rows: list[dict], models=MODELS) -> list[dict]:
  """Per model: the delivered stage's metrics and the summed stage seconds, over seeds."""
  out = []
  for model in models:
    runs = {}
    for r in rows:
      if r["model"] == model:
        runs.setdefault(r["seed"], []).append(r)
    if not runs:
      continue
    entry = {"model": model, "seeds": len(runs)}
    delivered = [_delivered(stages) for stages in runs.values()]
    values = {
      "valid_auc": [d["valid_auc"] for d in delivered],
      "test_auc": [d["test_auc"] for d in delivered],
      "test_logloss": [d["test_logloss"] for d in delivered],
      "seconds": [sum(s["seconds"] or 0 for s in stages) for stages in runs.values()],
    }
    for k, v in values.items():
      v = np.asarray(v, np.float64)
      entry[k], entry[k + "_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
    out.append(entry)
  return out


def _delivered(stages: list[dict]) -> dict:
  """The row of the stage the run delivered (the last, for a run that does not say)."""
  return next((s for s in stages if s.get("delivered")), stages[-1])


if __name__ == "__main__":
  main()
