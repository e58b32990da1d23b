"""The command line of `python -m train`: its flags, and the config they build.

`train/main.py` calls `main`. This module imports no jax at import time, so
`--local-devices` can still set XLA_FLAGS before the runtime starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import sys

from gin_jax import config as config_lib
from gin_jax import hints
from gin_jax.cluster import DEFAULT_CLUSTER_TIMEOUT
from gin_jax.config import BAD_ROWS, FORMATS, STAGE_PLANS


def build_parser(prog: str = "python -m train", description: str | None = None):
  """The flags of `python -m train` (benchmarks.quality reuses them)."""
  p = hints.ArgumentParser(
    prog=prog,
    description=description or "Train GIN / AOANet: search -> prune -> retrain -> test.",
    epilog="Any config field can be set as --section.field=value "
    "(e.g. --model.embed_dim=10 --train.keep_ratio=0.2).",
  )
  p.add_argument(
    "--train", help="training file (Criteo TSV, CSV or libfm; may be .gz), or Parquet dataset"
  )
  p.add_argument("--valid", help="validation file (else split from --train)")
  p.add_argument("--test", help="test file (else split from --train)")
  p.add_argument(
    "--split",
    help="ratios of --train: train,valid,test (e.g. 0.8,0.1,0.1), or train,valid with --test",
  )
  p.add_argument("--format", choices=FORMATS, help="input format")
  p.add_argument("--schema", help="schema file for --format=csv/parquet (JSON or YAML)")
  p.add_argument("--bad-rows", choices=BAD_ROWS, help="on a bad input row")
  p.add_argument(
    "--preset",
    help="demo (default without --train), default (with --train), frappe, frappe_x1, "
    "criteo_x1, criteo_paper, criteo_bars, tiny",
  )
  p.add_argument(
    "--config",
    help="experiment file (YAML or JSON) with model:, data:, train: sections of config "
    "fields (and optional name:, preset:); flags and --section.field=value override it",
  )
  p.add_argument(
    "--workdir",
    help="output directory (default: runs/<preset> without --train; with it, "
    "runs/<file name>-<6 hex digits of the data files' absolute paths>)",
  )
  p.add_argument(
    "--init-from",
    metavar="RUN_DIR",
    help="continue the model RUN_DIR delivered on this --train file (a new day of logs): "
    "same model config, its vocabulary grown by the new categories; one training stage "
    "unless --stages says otherwise; RUN_DIR is only read",
  )
  p.add_argument(
    "--group-by",
    metavar="FIELD",
    help="also report the AUC within each group of FIELD (a user column, say), averaged "
    "weighted by rows: gAUC (train.group_by)",
  )
  p.add_argument(
    "--stages",
    choices=(*STAGE_PLANS, *config_lib.STAGE_PLAN_ALIASES),
    help="aoanet: search -> prune -> retrain; single: one stage ('gin': the same, its old name)",
  )
  return p


def split_overrides(parser: argparse.ArgumentParser, rest: list[str]) -> dict[str, str]:
  """`--section.field=value` arguments left over by the parser, as {"section.field": value}."""
  overrides = {}
  for item in rest:
    if not item.startswith("--") or "=" not in item or "." not in item.split("=", 1)[0]:
      parser.error(
        f"unrecognised argument {item!r} (config overrides look like --train.epochs=2)"
        + _nearest_flag(parser, item)
      )
    key, value = item[2:].split("=", 1)
    overrides[key] = value
  return overrides


def _nearest_flag(parser: argparse.ArgumentParser, item: str) -> str:
  """`; did you mean --workdir?` for a misspelt flag, or `--train.epochs=2` for `--epochs=2`."""
  if not item.startswith("--"):
    return ""
  name, eq, value = item[2:].partition("=")
  fields = config_lib.field_names()
  owners = [f for f in fields if f.endswith(f".{name}")]
  if len(owners) == 1:
    return f"; did you mean --{owners[0]}={value or 'VALUE'}?"
  flag = hints.closest(f"--{name}", [s for a in parser._actions for s in a.option_strings])
  if flag is not None:
    return f"; did you mean {flag}?"
  field = hints.closest(name, fields)
  return f"; did you mean --{field}={value or 'VALUE'}?" if field else ""


def full_parser() -> argparse.ArgumentParser:
  """Every flag of `python -m train`: build_parser's and those of the trainer alone."""
  p = build_parser()
  p.add_argument("--overwrite", action="store_true", help="discard a mismatched workdir")
  p.add_argument("--coordinator", help="host:port of process 0 (multi-host)")
  p.add_argument("--num-processes", type=int, help="number of processes (multi-host)")
  p.add_argument("--process-id", type=int, help="this process's index (multi-host)")
  p.add_argument(
    "--cluster-timeout",
    type=float,
    default=DEFAULT_CLUSTER_TIMEOUT,
    metavar="SECONDS",
    help="give up joining a multi-host job after this long, in one line (default 60)",
  )
  p.add_argument(
    "--local-devices", type=int, help="fake this many CPU devices (testing sharding on one machine)"
  )
  return p


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, str]]:
  """The flags of `python -m train` (default: sys.argv) and its config overrides."""
  p = full_parser()
  args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
  return args, split_overrides(p, rest)


def build_config(args: argparse.Namespace, overrides: dict[str, str]) -> config_lib.Config:
  """The preset, then the --config file, then data flags, then overrides (later wins).

  The preset is --preset, else the file's `preset:`, else `default` (the
  recipe for real data, config.default) with a training file and `demo` without
  one. A run on a training file without a named preset is named after the file
  (its workdir defaults to runs/<file name>-<hash>: default_workdir).
  """
  from_file, file_preset = {}, None
  if getattr(args, "config", None):
    from_file, file_preset = config_lib.load_file(args.config)
  has_train = bool(args.train or from_file.get("data.train"))
  name = args.preset or file_preset or ("default" if has_train else "demo")
  cfg = config_lib.preset(name)
  if has_train and not (args.preset or file_preset) and "name" not in from_file:
    train = args.train or from_file["data.train"]
    cfg = dataclasses.replace(cfg, name=os.path.basename(train).split(".")[0] or name)
  data = {}
  for key in ("train", "valid", "test", "format", "schema", "split", "bad_rows"):
    value = getattr(args, key, None)
    if value is not None:
      data[f"data.{key}"] = value
  explicit_format = args.format or "data.format" in from_file
  if has_train and not explicit_format and cfg.data.format == "synthetic":
    data["data.format"] = "criteo"
  if getattr(args, "stages", None):
    data["train.stages"] = args.stages
  if getattr(args, "group_by", None):
    data["train.group_by"] = args.group_by
  if getattr(args, "init_from", None):
    data["train.init_from"] = os.path.abspath(args.init_from)
    if "train.stages" not in {**from_file, **data, **overrides}:
      data["train.stages"] = "single"  # keep the architecture (and pruning) it continues
  return config_lib.override(cfg, {**from_file, **data, **overrides})


def _file_stem(path: str) -> str:
  """`clicks` of data/clicks.csv.gz, of data/clicks/ and of 'data/clicks/part-*.parquet'."""
  path = os.path.normpath(path)
  while "*" in os.path.basename(path) or "?" in os.path.basename(path):  # a glob: its folder
    path = os.path.dirname(path)
  return re.sub(r"[^\w\-]", "_", os.path.basename(path).split(".")[0])


def default_workdir(cfg: config_lib.Config) -> str:
  """Where a run goes without --workdir.

  runs/<preset> without a training file (runs/demo). With one, runs/<file
  name>-<6 hex digits>, the digits a hash of the absolute paths of the train,
  valid and test files: two files named train.csv in different folders never
  share a workdir (where the guard would refuse the second run), and the same
  command, rerun, resumes.
  """
  data = cfg.data
  if not data.train:
    return os.path.join("runs", cfg.name)
  paths = "\n".join(os.path.abspath(p) if p else "" for p in (data.train, data.valid, data.test))
  digest = hashlib.sha256(paths.encode()).hexdigest()[:6]
  return os.path.join("runs", f"{_file_stem(data.train) or cfg.name}-{digest}")


def train_main(args: argparse.Namespace, overrides: dict[str, str]) -> None:
  """Joins the job, builds the config and trains; a bad input or environment exits 2."""
  from gin_jax import cluster

  try:  # a bad launcher variable is one line at once, before jax's import (seconds)
    cluster.check(args.coordinator, args.num_processes, args.process_id, args.cluster_timeout)
  except cluster.ClusterError as e:
    cluster.refuse(e)
  from gin_jax import runtime, training  # imports jax: after XLA_FLAGS is final
  from gin_jax.data import DataError
  from gin_jax.data.workers import WorkerDied
  from gin_jax.training import checkpointing

  try:
    runtime.init_runtime(
      args.coordinator, args.num_processes, args.process_id, timeout=args.cluster_timeout
    )
    cfg = build_config(args, overrides)
    workdir = args.workdir or default_workdir(cfg)
    training.run(cfg, workdir, overwrite=args.overwrite)
  except (
    training.TrainingError,
    checkpointing.CheckpointError,
    DataError,
    WorkerDied,  # a preparation worker killed (out of memory?): its message says what to do
    ValueError,
    OSError,
  ) as e:
    runtime.fail(e)
  except KeyboardInterrupt as e:  # Ctrl-C; training.Interrupted says the step reached
    step = getattr(e, "step", None)
    runtime.interrupted(
      "interrupted before the first step; the same command starts the run again" if step is None
      else f"interrupted at step {step}; the same command resumes"
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
  """`python -m train`: parse the flags, set up the devices, train."""
  args, overrides = parse(argv)
  if args.local_devices:
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={args.local_devices}"
    )
  train_main(args, overrides)
