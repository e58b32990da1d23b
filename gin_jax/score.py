"""Offline scoring from checkpoints, and export for serving.

  python -m gin_jax.score --checkpoint WORKDIR [--step N | --best | --stage NAME] --data FILE
      --out FILE
  python -m gin_jax.score --checkpoint WORKDIR --export DIR
  python -m gin_jax.score --checkpoint WORKDIR --export BASE --next-version
  python -m gin_jax.score --exported DIR --data FILE --out FILE

The command line streams .csv, .npy and .parquet output chunk by chunk
(gin_jax.scoring.stream), so its memory does not grow with the file. The
library is gin_jax.scoring.
"""

from __future__ import annotations

import functools
import os
import sys

from gin_jax import cluster, hints
from gin_jax.config import BAD_ROWS, FORMATS


def main(argv: list[str] | None = None) -> None:
  """`python -m gin_jax.score`: parse the flags, export and / or score a file."""
  p = hints.ArgumentParser(prog="python -m gin_jax.score", description=__doc__.split("\n\n")[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--checkpoint", help="training workdir")
  src.add_argument("--exported", help="directory written by --export")
  which = p.add_mutually_exclusive_group()
  which.add_argument("--step", type=int, help="checkpoint step (default: newest)")
  which.add_argument(
    "--best", action="store_true", help="best checkpoint of the stage the run delivers"
  )
  which.add_argument(
    "--stage",
    metavar="NAME",
    help="best checkpoint of this stage (search, retrain; train for one-stage runs): e.g. the "
    "pruned model (retrain) where the search stage validated better and was delivered",
  )
  p.add_argument("--data", help="file to score (any supported format, may be .gz)")
  p.add_argument("--format", choices=FORMATS, help="default: training's")
  p.add_argument("--schema", help="CSV schema (default: training's)")
  p.add_argument("--bad-rows", choices=BAD_ROWS, default="error")
  p.add_argument(
    "--group-by",
    metavar="FIELD",
    help="with labels, also the AUC within each group of FIELD (a user column, say), "
    "averaged weighted by rows (gAUC)",
  )
  p.add_argument("--out", help="output .csv, .npy or .parquet; - writes csv to standard output")
  p.add_argument("--export", help="write a jax.export directory here (with --checkpoint)")
  version = p.add_mutually_exclusive_group()
  version.add_argument(
    "--next-version",
    action="store_true",
    help="--export names a model base path (what gin_jax.serve serves): write the model "
    "as its next numbered version, BASE/<highest + 1>",
  )
  version.add_argument(
    "--version", type=int, metavar="N", help="like --next-version, as version N (never replaced)"
  )
  p.add_argument(
    "--cluster-timeout",
    type=float,
    default=cluster.DEFAULT_CLUSTER_TIMEOUT,
    metavar="SECONDS",
    help="give up joining a multi-host job (srun, mpirun) after this long (default 60)",
  )
  args = p.parse_args(argv)
  try:  # a bad launcher variable is one line at once, before jax's import (seconds)
    cluster.check(timeout=args.cluster_timeout)
  except cluster.ClusterError as e:
    cluster.refuse(e)
  from gin_jax import data, runtime  # jax and the model code: once the flags are known good
  from gin_jax.scoring import Scorer, ScoringError, export, export_version, score_file, writers
  from gin_jax.training import checkpointing

  try:
    runtime.init_runtime(timeout=args.cluster_timeout)
    if (args.next_version or args.version is not None) and not args.export:
      p.error("--next-version and --version need --export BASE")
    if args.export:
      if not args.checkpoint:
        p.error("--export needs --checkpoint")
      which = {"step": args.step, "best": args.best, "stage": args.stage}
      if args.next_version or args.version is not None:
        if args.version is not None and args.version < 1:
          p.error("--version must be a positive integer")
        out = export_version(args.checkpoint, args.export, version=args.version, **which)
        print(f"exported to {out} (version {out.name})")
      else:
        out = export(args.checkpoint, args.export, **which)
        print(f"exported to {out}")
      if not args.data:
        return
    if not args.data or not args.out:
      p.error("scoring needs --data and --out")
    writers.check_output(args.out)  # before the model loads
    if args.checkpoint:
      scorer = Scorer.from_checkpoint(
        args.checkpoint, step=args.step, best=args.best, stage=args.stage
      )
    else:
      scorer = Scorer.from_export(args.exported)
    options = {"fmt": args.format, "schema": args.schema, "bad_rows": args.bad_rows}
    options["group_by"] = args.group_by
    summary = score_file(scorer, args.data, args.out, **options)
    say = functools.partial(print, file=sys.stderr if args.out == writers.STDOUT else sys.stdout)
    say(f"scored {summary.rows} rows with {scorer.description} -> {args.out}")
    if summary.bad.count:
      say(
        f"skipped {summary.bad.count} bad rows (listed in {args.out}); "
        f"first: {summary.bad.examples[:3]}"
      )
    if summary.metrics is not None:
      m = summary.metrics
      say(f"AUC {m['auc']:.6f}  logloss {m['logloss']:.6f}  (n={m['n']})")
      if "gauc" in m:
        say(f"gAUC {m['gauc']:.6f}  (by {m['group_by']}: {m['gauc_groups']} groups with both "
            "classes, each weighted by its rows)")  # fmt: skip
  except (ScoringError, checkpointing.CheckpointError, data.DataError, ValueError, OSError) as e:
    runtime.fail(e)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  main()
