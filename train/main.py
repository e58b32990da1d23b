"""Entry point of `python -m train` (intentionally short: logic lives in gin_jax).

python -m train                       # the embedded demo (synthetic data)
python -m train --train day_0.gz --format criteo --preset criteo_paper
python -m train --preset tiny --model.num_subspaces=4 --train.epochs=1
python -m train --config study/dcnv2.yaml --train.seed=1
"""

from __future__ import annotations

import argparse
import os
import sys


def build_parser(prog: str = "python -m train", description: str | None = None):
  """The flags of `python -m train` (benchmarks.quality reuses them)."""
  p = argparse.ArgumentParser(
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
  p.add_argument("--format", choices=["criteo", "csv", "libfm", "parquet"], help="input format")
  p.add_argument("--schema", help="schema file for --format=csv/parquet (JSON or YAML)")
  p.add_argument("--bad-rows", choices=["error", "skip"], help="on a bad input row")
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
  p.add_argument("--workdir", help="output directory (default runs/<preset>)")
  p.add_argument("--stages", choices=["aoanet", "gin"], help="aoanet: search+retrain; gin: one")
  return p


def split_overrides(parser: argparse.ArgumentParser, rest: list[str]) -> dict[str, str]:
  """`--section.field=value` arguments left over by the parser, as {"section.field": value}."""
  overrides = {}
  for item in rest:
    if not item.startswith("--") or "=" not in item or "." not in item.split("=", 1)[0]:
      parser.error(f"unrecognised argument {item!r} (config overrides look like --train.epochs=2)")
    key, value = item[2:].split("=", 1)
    overrides[key] = value
  return overrides


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
  p = build_parser()
  p.add_argument("--overwrite", action="store_true", help="discard a mismatched workdir")
  p.add_argument("--coordinator", help="host:port of process 0 (multi-host)")
  p.add_argument("--num-processes", type=int, help="number of processes (multi-host)")
  p.add_argument("--process-id", type=int, help="this process's index (multi-host)")
  p.add_argument(
    "--local-devices", type=int, help="fake this many CPU devices (testing sharding on one machine)"
  )
  args, rest = p.parse_known_args(argv)
  return args, split_overrides(p, rest)


def main(argv: list[str] | None = None) -> None:
  args, overrides = parse(sys.argv[1:] if argv is None else argv)
  if args.local_devices:
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={args.local_devices}"
    )
  from gin_jax import cli  # imports jax: after XLA_FLAGS is final

  cli.train_main(args, overrides)


if __name__ == "__main__":
  main()
