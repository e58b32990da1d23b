"""Whole training epochs end to end: does the input keep the step fed?

  python -m benchmarks.epoch_bench [--rows 2000000] [--batch 1024] [--preset criteo_paper]

Generates a Criteo-shaped dataset with realistic per-field cardinalities (13
numeric fields, 26 categorical ones from 3 up to --max-vocab values, log-spaced,
Zipf-distributed ids), prepares it (timed), then times whole epochs of the
jitted train step fed three ways, in one run:

- step only: the step on the epoch's batches, all placed on the device first
  (the upper bound);
- host pipeline: grain loader -> host-to-device copy -> step (the default on CPU);
- resident: the split on the device, batches gathered there (data.device_resident).

Reports samples/s and each end-to-end mode's share of the step-only rate
(goal on CPU: the host pipeline >= 90%). Prints a table; JSON with --record or --json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax

from benchmarks import common
from gin_jax import config as config_lib
from gin_jax import models as model_lib
from gin_jax.data import SyntheticSpec, pipeline, prepare, write_criteo_tsv
from gin_jax.training import device_input, partitioning
from gin_jax.training import steps as steps_lib


def _epoch(fns, state, batches, steps: int):
  """Runs `steps` train steps over `batches`; returns (state, seconds)."""
  start = time.perf_counter()
  for _, batch in zip(range(steps), batches):
    state, metrics = fns.step(state, batch)
  common.block((state["step"], metrics))
  return state, time.perf_counter() - start


def _variant(text: str) -> dict:
  """ "KEY=VALUE,KEY=VALUE" -> {KEY: VALUE}."""
  pairs = [kv for kv in text.split(",") if kv]
  bad = [kv for kv in pairs if "=" not in kv]
  if bad:
    raise SystemExit(f"--variant wants KEY=VALUE[,KEY=VALUE...], got {text!r}")
  return dict(kv.split("=", 1) for kv in pairs)


def _time_variant(cfg, meta, split, mesh, batch: int, modes: list[str]) -> dict:
  """Seconds of one epoch of each input mode for the config `cfg` (one compile)."""
  model_spec = model_lib.ModelSpec(
    cfg.model, meta.num_fields, meta.num_table_rows,
    model_lib.padded_table_rows(meta.num_table_rows, partitioning.num_shards(mesh)),
  )  # fmt: skip
  fns = steps_lib.build(model_spec, cfg.train, mesh)
  state = fns.init(jax.random.key(0))
  steps = len(split) // batch

  def host_batches(epoch):
    it = pipeline.train_iterator(split, batch, seed=0, epoch=epoch)
    return (partitioning.shard_batch(mesh, b) for b in it)

  def streamed(epoch):
    chunk = device_input.chunk_batches(split, batch, mesh, cfg.data.device_fraction)
    return device_input.StreamedBatches(split, mesh, batch, 0, epoch, chunk)

  # Warm up (compile) on a few batches. Step-only: the epoch's own batches (the
  # same order every mode runs), all placed on the device before the clock
  # starts. (Cycling a few warm batches instead understates the step: repeated
  # rows have short idle gaps, so lazy Adam's catch-up does less work.)
  warm = [b for _, b in zip(range(8), host_batches(99))]
  state, _ = _epoch(fns, state, warm, len(warm))
  results = {}
  resident = None
  for mode in modes:
    if mode == "step only":
      placed = list(host_batches(0))
      common.block(placed)
      state, results[mode] = _epoch(fns, state, placed, steps)
      del placed
    elif mode == "host pipeline":
      state, results[mode] = _epoch(fns, state, host_batches(0), steps)
    elif mode in ("resident", "resident input only"):
      if resident is None:  # place the split, compile the fused gather-and-step
        resident = device_input.ResidentSplit(split, mesh)
        state, _ = _epoch(fns, state, resident.epoch(batch, 0, 99), 2)
      batches = resident.epoch(batch, 0, 1)
      if mode == "resident":
        state, results[mode] = _epoch(fns, state, batches, steps)
      else:  # the input side alone: how fast batches can be produced
        start = time.perf_counter()
        common.block([resident.materialize(b) for b in batches])
        results[mode] = time.perf_counter() - start
    elif mode == "streamed":
      state, results[mode] = _epoch(fns, state, streamed(0), steps)
    else:
      raise SystemExit(f"unknown mode {mode!r}; choose from {MODES}")
  return results


MODES = ("step only", "host pipeline", "resident", "resident input only", "streamed")


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rows", type=int, default=2_000_000)
  p.add_argument("--max-vocab", type=int, default=2_000_000, help="largest categorical field")
  p.add_argument("--batch", type=int, help="default: the preset's train.batch_size")
  p.add_argument("--preset", default="criteo_paper")
  p.add_argument(
    "--variant", action="append", type=_variant, metavar="KEY=VALUE[,KEY=VALUE]",
    help="config overrides timed as one variant (repeatable; default: the preset as it is)",
  )  # fmt: skip
  p.add_argument("--modes", default="step only,host pipeline,resident",
                 help=f"comma-separated, from: {', '.join(MODES)}")  # fmt: skip
  p.add_argument("--workdir", help="where the data goes (default: a temporary directory)")
  common.add_output_flags(p, "epoch_bench_<backend>.json")
  common.add_devices_flag(p)
  args = p.parse_args(argv)
  modes = [m.strip() for m in args.modes.split(",") if m.strip()]
  if "step only" not in modes:
    modes.insert(0, "step only")  # every share is relative to it

  backend = jax.default_backend()
  tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="epoch_bench_")
  root = args.workdir or tmp.name
  os.makedirs(root, exist_ok=True)

  # ---- data
  path = os.path.join(root, f"criteo_{args.rows}.tsv")
  spec = SyntheticSpec(num_rows=args.rows, max_vocab=args.max_vocab, seed=0)
  if not os.path.exists(path):
    t0 = time.perf_counter()
    write_criteo_tsv(path, spec)
    print(f"generated {args.rows:,} rows in {time.perf_counter() - t0:.1f} s", flush=True)
  base = config_lib.preset(args.preset)
  batch = args.batch or base.train.batch_size
  cfg = config_lib.override(base, {
    "data.format": "criteo", "data.train": path, "data.split": "1,0,0", "data.min_count": "1",
    "train.batch_size": str(batch),
  })  # fmt: skip
  t0 = time.perf_counter()
  meta, splits = prepare(cfg.data, os.path.join(root, "cache"), progress=False)
  prep_s = time.perf_counter() - t0
  split = splits["train"]
  sizes = sorted(f.size for f in meta.fields if f.kind == "categorical")
  print(f"prepared {len(split):,} rows in {prep_s:.1f} s ({len(split) / prep_s:,.0f} rows/s); "
        f"{meta.num_table_rows:,} table rows; categorical fields {sizes[0]:,} .. {sizes[-1]:,} "
        "rows", flush=True)  # fmt: skip

  mesh = partitioning.make_mesh(common.local_devices(args.devices))
  steps = len(split) // batch
  # What `data.device_resident=auto` picks here ("off": the host pipeline).
  auto = device_input.choose_mode("auto", split, mesh, cfg.data.device_fraction)
  auto_name = "host pipeline" if auto == "off" else auto
  variants, rows = [], []
  for overrides in args.variant or [{}]:
    vcfg = config_lib.override(cfg, overrides)
    name = ",".join(f"{k}={v}" for k, v in overrides.items()) or "preset"
    print(f"{name}: {vcfg.train.embedding_optimizer}, {steps} steps of {batch}", flush=True)
    results = _time_variant(vcfg, meta, split, mesh, batch, modes)
    rates = {k: steps * batch / v for k, v in results.items()}
    variants.append({"overrides": overrides, "epoch_seconds": results, "samples_per_s": rates})
    for mode, seconds in results.items():
      share = results["step only"] / seconds
      rows.append([name, mode, steps, f"{seconds:.2f}", f"{rates[mode]:,.0f}", f"{share:.0%}"])
  print()
  print(common.markdown_table(
    ["variant", "input", "steps", "epoch s", "samples/s", "of step-only"], rows))  # fmt: skip
  first = variants[0]
  if backend == "cpu" and "host pipeline" in first["epoch_seconds"]:
    share = first["epoch_seconds"]["step only"] / first["epoch_seconds"]["host pipeline"]
    print(f"\nGoal: host pipeline end to end >= 90% of step-only samples/s on CPU: {share:.0%} "
          f"({'PASS' if share >= 0.9 else 'FAIL'})")  # fmt: skip
  elif auto_name in first["samples_per_s"]:
    rate = first["samples_per_s"][auto_name]
    print(f"\nGoal on one accelerator at the BARS preset (criteo_bars): >= 5M samples/s end to "
          f"end. {args.preset}, {auto_name} (what auto picks), first variant: {rate:,.0f} "
          f"({'PASS' if rate >= 5e6 else 'FAIL'})")  # fmt: skip
  payload = {
    "backend": common.backend_info(mesh), "rows": len(split), "batch": batch,
    "preset": args.preset, "table_rows": meta.num_table_rows, "prepare_s": prep_s,
    "steps_per_epoch": steps, "auto_input": auto_name,
    "epoch_seconds": first["epoch_seconds"], "samples_per_s": first["samples_per_s"],
    "variants": variants,
  }  # fmt: skip
  common.write_result(payload, args, common.backend_file("epoch_bench"))
  if tmp is not None:
    tmp.cleanup()
  return payload


if __name__ == "__main__":
  main()
