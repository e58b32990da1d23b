"""Training-step and scoring throughput of AOANet, with FLOP accounting and table scale.

  python -m benchmarks.train_bench [--quick] [--json OUT]
      [--rows 10000,1000000,10000000,100000000] [--optimizers rowwise_adagrad,lazy_adam,adam]

On synthetic Criteo-shaped batches already on the device (the input pipeline is
measured by data_bench and epoch_bench):

- batch sweep: samples/s of the jitted, sharded, donated `train_step` of the
  paper and BARS presets, the scoring step, and the model FLOP utilisation
  (XLA's cost_analysis of the loss's forward + backward, without the optimizer,
  per second, over a matmul peak measured in the same run);
- table scale: the paper preset at batch 1024 for 10k .. 100M table rows and
  each `train.embedding_optimizer`, each point in its own process so that its
  peak RSS is its own (--quick: all in one, the smoke test's path). Batches draw
  ids uniformly over the table (no locality).
  Points whose table and optimizer state would not fit in memory are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import jax
import numpy as np

from benchmarks import common
from gin_jax import config as config_lib
from gin_jax import models as model_lib
from gin_jax.training import partitioning
from gin_jax.training import steps as steps_lib

FIELDS = common.CRITEO_FIELDS


def _build(
  preset: str, rows: int, mesh, optimizer=None, history=0, pooling="mean", hidden=None
) -> tuple:
  """(config, step functions) of the preset over `rows` table rows, with a `history`-slot
  list field pooled by `pooling` (attention: against the last categorical field, C26,
  with the unit's hidden widths `hidden`, "W1,W2,..."; default the preset's)."""
  cfg = config_lib.preset(preset)
  if optimizer:
    cfg = config_lib.override(cfg, {"train.embedding_optimizer": optimizer})
  if hidden:
    cfg = config_lib.override(cfg, {"model.target_attention_hidden": hidden})
  slots = (1,) * FIELDS + (history,) if history else None
  attention = ((FIELDS, FIELDS - 1),) if history and pooling == "attention" else ()
  spec = model_lib.ModelSpec(
    cfg.model, FIELDS + bool(history), rows,
    model_lib.padded_table_rows(rows, partitioning.num_shards(mesh)), field_slots=slots,
    attention=attention,
  )  # fmt: skip
  return cfg, steps_lib.build(spec, cfg.train, mesh)


def bench_one(
  preset: str,
  batch_size: int,
  rows: int,
  mesh,
  steps: int,
  optimizer: str | None = None,
  history: int = 0,
) -> dict:
  """Train-step and eval-step throughput for one (preset, batch, table rows, optimizer).

  `history` > 0: one more field, multi-valued with that many slots (common.criteo_batch).
  """
  cfg, fns = _build(preset, rows, mesh, optimizer, history)
  state = fns.init(jax.random.key(0))
  batches = [common.criteo_batch(mesh, batch_size, rows, seed, history) for seed in range(4)]
  # The executable compiled for the stats is the one timed (no second compilation).
  train_step, step_stats = common.compile_with_stats(fns.train_step, state, batches[0])
  model_flops = common.loss_flops(fns, state, batches[0])
  for i in range(3):  # warm up
    state, metrics = train_step(state, batches[i % 4])
  common.block(metrics)
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = train_step(state, batches[i % 4])
  common.block((state["step"], metrics))
  step_s = (time.perf_counter() - start) / steps
  eval_fn = lambda b: fns.eval_step(state["params"], state["batch_stats"], state["masks"], b)
  eval_s = common.time_fn(eval_fn, batches[0], warmup=2, iters=max(3, steps // 2))
  return {
    "preset": preset,
    "history": history,
    "optimizer": cfg.train.embedding_optimizer,
    "batch_size": batch_size,
    "table_rows": rows,
    "step_ms": step_s * 1e3,
    "train_samples_per_s": batch_size / step_s,
    "score_samples_per_s": batch_size / eval_s,
    "model_flops_per_step": model_flops,
    "step_flops_xla": step_stats["flops"],
    "step_temp_bytes": step_stats["temp_bytes"],
    "model_gflops_per_s": None if model_flops is None else model_flops / step_s / 1e9,
    "table_mib": rows * cfg.model.embed_dim * 4 / 2**20,
  }


# Bytes per table entry of each optimizer's state besides the table itself
# (+ 4 bytes per row for the last-update step of the sparse ones).
_STATE_ENTRIES = {"rowwise_adagrad": 0, "lazy_adam": 2, "adam": 2}


def _fits(rows: int, embed_dim: int, optimizer: str) -> tuple[bool, float]:
  """Whether a table of `rows` and its optimizer state fit in this machine's memory."""
  need = rows * (embed_dim * 4 * (1 + _STATE_ENTRIES[optimizer]) + 8)
  # Initialisation holds the random draw and the padded table at once: ~2x the table.
  need += rows * embed_dim * 4
  total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return need < 0.8 * total, need / 2**30


def _scale_points(specs: list[tuple], steps: int, quick: bool, devices=None) -> list[dict]:
  """Table-scale points (rows, optimizer, history, preset), each in a fresh process so
  that its peak RSS is its own; with `quick`, all of them in one fresh process (the
  smoke test's path: their peak RSS is then the largest so far)."""
  groups = [specs] if quick else [[spec] for spec in specs]
  out = []
  for group in groups:
    points = ";".join(f"{preset},1024,{rows},{opt},{history}"
                      for rows, opt, history, preset in group)  # fmt: skip
    cmd = [sys.executable, "-m", "benchmarks.train_bench", "--point", points, "--steps", str(steps)]
    cmd += ["--devices", str(devices)] if devices else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [json.loads(x) for x in proc.stdout.strip().splitlines() if x.startswith("{")]
    for k, (rows, opt, *_) in enumerate(group):
      if k < len(lines):
        out.append(lines[k])
      else:
        out.append({"table_rows": rows, "optimizer": opt, "error": proc.stderr[-500:]})
  return out


def _run_point(specs: str, steps: int, devices=None) -> None:
  mesh = partitioning.make_mesh(common.local_devices(devices))
  for spec in specs.split(";"):
    preset, batch, rows, optimizer, history = spec.split(",")
    r = bench_one(preset, int(batch), int(rows), mesh, steps, optimizer, int(history))
    r["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(r), flush=True)


def _stepper(preset: str, rows: int, mesh, history=0, pooling="mean", hidden=None) -> tuple:
  """(a zero-argument call that runs one train step at batch 1024, compiled and warmed
  up; the point's description) for history_section's interleaved timing."""
  cfg, fns = _build(preset, rows, mesh, None, history, pooling, hidden)
  batches = [common.criteo_batch(mesh, 1024, rows, seed, history, pooling) for seed in range(4)]
  held = {"state": fns.init(jax.random.key(0)), "i": 0}

  def call():
    held["state"], metrics = fns.train_step(held["state"], batches[held["i"] % 4])
    held["i"] += 1
    return metrics

  for _ in range(3):
    common.block(call())
  hidden = list(cfg.model.target_attention_hidden) if history and pooling == "attention" else None
  point = {"preset": preset, "history": history, "pooling": pooling if history else None,
           "optimizer": cfg.train.embedding_optimizer, "batch_size": 1024, "table_rows": rows,
           "attention_hidden": hidden}  # fmt: skip
  return call, point


def history_section(args, mesh, steps: int) -> dict:
  """The paper preset with and without one `args.history`-slot list field (issues #22, #35).

  One process, every point compiled first and then timed round-robin (five rounds,
  `common.time_rounds`), so that load from other jobs falls on all of them alike and
  each ratio is the median of its per-round ratios (`common.paired_ratio`): train
  samples/s at batch 1024 (100k table rows) with the field mean-pooled and pooled
  by target attention (DIN's unit against C26, model.target_attention_hidden) over
  without it; the step with the field at 10k and 10M table rows, both poolings
  (10k and 100k, attention only, with --quick).
  """
  sizes = (10_000, 100_000) if args.quick else (10_000, 10_000_000)
  poolings = ("attention",) if args.quick else ("mean", "attention")
  keys = [("without", 100_000), ("mean", 100_000), ("attention", 100_000)]
  keys += [(p, rows) for p in poolings for rows in sizes if (p, rows) not in keys]
  calls, points = {}, {}
  for pooling, rows in keys:
    history = 0 if pooling == "without" else args.history
    calls[pooling, rows], points[pooling, rows] = _stepper(
      args.preset,
      rows,
      mesh,
      history,
      "mean" if pooling == "without" else pooling,
      args.attention_hidden,
    )
    print(f"  compiled {pooling} at {rows:,} rows", flush=True)
  timed = common.time_rounds(calls, dict.fromkeys(calls, steps), rounds=5)
  for key, point in points.items():
    step_s = float(np.median([t for r in timed[key] for t in r]))
    point.update(step_ms=step_s * 1e3, train_samples_per_s=1024 / step_s)
  # a's samples/s over b's: b's step time over a's, round by round
  ratio_of = lambda a, b: 1.0 / common.paired_ratio(timed[a], timed[b])  # noqa: E731
  plain, listed = points["without", 100_000], points["mean", 100_000]
  attended = points["attention", 100_000]
  ratio = ratio_of(("mean", 100_000), ("without", 100_000))
  attention_ratio = ratio_of(("attention", 100_000), ("mean", 100_000))
  rows_out = [("without", plain, 1.0), (f"+ {args.history}-value list, mean", listed, ratio),
              (f"+ {args.history}-value list, attention", attended,
               ratio_of(("attention", 100_000), ("without", 100_000)))]  # fmt: skip
  table = [[name, f"{r['train_samples_per_s']:,.0f}", common.fmt(r["step_ms"]), f"{x:.2f}"]
           for name, r, x in rows_out]  # fmt: skip
  print()
  print(common.markdown_table(["paper preset, batch 1024", "train samples/s", "step ms",
                               "x without"], table))  # fmt: skip
  growth = {}
  for pooling in poolings:
    growth[pooling] = common.paired_ratio(timed[pooling, sizes[1]], timed[pooling, sizes[0]])
    print(
      f"with the list ({pooling}): step at {sizes[1]:,} rows / {sizes[0]:,} rows = "
      f"{growth[pooling]:.2f} (<= 1.15: {'PASS' if growth[pooling] <= 1.15 else 'FAIL'})"
    )
  print(f"list field throughput {ratio:.2f}x of without (>= 0.6: "
        f"{'PASS' if ratio >= 0.6 else 'FAIL'})")  # fmt: skip
  print(f"attention over mean pooling: {attention_ratio:.2f}x the samples/s (>= 0.5: "
        f"{'PASS' if attention_ratio >= 0.5 else 'FAIL'})")  # fmt: skip
  return {
    "without": plain, "with": listed, "attention": attended, "ratio": ratio,
    "attention_over_mean": attention_ratio,
    "scale": [points[p, rows] for p in poolings for rows in sizes],
    "scale_growth": growth.get("mean"), "attention_scale_growth": growth.get("attention"),
  }  # fmt: skip


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="few points, few steps (smoke test)")
  common.add_output_flags(
    p, "train_bench_<backend>.json (train_bench_history_<backend>.json with --only-history)"
  )
  p.add_argument("--rows", default="10000,1000000,10000000,100000000", help="table rows (scale)")
  p.add_argument("--optimizers", default="rowwise_adagrad,lazy_adam,adam", help="scale sweep")
  p.add_argument("--batches", default=None, help="batch sizes to sweep (paper preset)")
  p.add_argument("--steps", type=int, default=None, help="timed steps per point")
  p.add_argument("--history", type=int, default=50, help="slots of the list-field variant")
  p.add_argument("--only-history", action="store_true", help="run the list-field section alone")
  p.add_argument(
    "--attention-hidden", metavar="W1,W2,...",
    help="hidden widths of the attention unit (default: model.target_attention_hidden)",
  )  # fmt: skip
  p.add_argument("--skip-history", action="store_true", help="leave the list-field section out")
  p.add_argument(
    "--preset",
    default="criteo_paper",
    help="the model of the batch sweep, table scale and list field (default criteo_paper; "
    "the smoke test runs the tiny one)",
  )
  common.add_devices_flag(p)
  p.add_argument("--point", help=argparse.SUPPRESS)  # internal: one scale point, JSON out
  args = p.parse_args(argv)
  steps = args.steps or (3 if args.quick else 20)
  if args.point:
    return _run_point(args.point, steps, args.devices)

  backend = jax.default_backend()
  mesh = partitioning.make_mesh(common.local_devices(args.devices))
  if args.only_history:
    payload = {"backend": common.backend_info(mesh), "steps": steps,
               "history": history_section(args, mesh, steps)}  # fmt: skip
    common.write_result(payload, args, common.backend_file("train_bench_history"))
    return None
  peak = common.measure_matmul_peak()
  print(f"backend {backend}, {jax.device_count()} device(s); matmul peak {peak:.1f} GFLOP/s")
  if args.quick:
    batches, presets, rows_sweep = [256], [args.preset], [10_000, 100_000]
  else:
    default = "256,1024,4096" if backend == "cpu" else "1024,4096,16384,65536"
    batches = [int(b) for b in (args.batches or default).split(",")]
    presets = [args.preset, "criteo_bars"]
    rows_sweep = [int(r) for r in args.rows.split(",")]

  # ---- batch sweep (default optimizer)
  points = [(args.preset, b, 100_000) for b in batches]
  if "criteo_bars" in presets:
    points += [("criteo_bars", 4096, 100_000)]
  results = []
  for preset, batch, rows in points:
    r = bench_one(preset, batch, rows, mesh, steps)
    r["fraction_of_peak"] = None if r["model_gflops_per_s"] is None else (
      r["model_gflops_per_s"] / peak)  # fmt: skip
    r["score_over_train"] = r["score_samples_per_s"] / r["train_samples_per_s"]
    results.append(r)
    print(f"  {preset} batch {batch}: {r['train_samples_per_s']:,.0f} samples/s", flush=True)
  headers = ["preset", "optimizer", "batch", "step ms", "train samples/s", "score samples/s",
             "score/train", "model GFLOP/s", "of peak", "step temp MiB"]  # fmt: skip
  table = [
    [r["preset"], r["optimizer"], r["batch_size"], common.fmt(r["step_ms"]),
     f"{r['train_samples_per_s']:,.0f}", f"{r['score_samples_per_s']:,.0f}",
     common.fmt(r["score_over_train"]), common.fmt(r["model_gflops_per_s"]),
     "-" if r["fraction_of_peak"] is None else f"{r['fraction_of_peak']:.0%}",
     common.fmt(None if r["step_temp_bytes"] is None else r["step_temp_bytes"] / 2**20)]
    for r in results
  ]  # fmt: skip
  print()
  print(common.markdown_table(headers, table))

  # ---- table scale, one process per point (--quick: one for all)
  embed_dim = config_lib.preset(args.preset).model.embed_dim
  scale = []
  todo = []
  for optimizer in args.optimizers.split(","):
    for rows in rows_sweep:
      fits, gib = _fits(rows, embed_dim, optimizer)
      if not fits:
        scale.append({"table_rows": rows, "optimizer": optimizer, "skipped_gib": gib})
        print(f"  {optimizer} {rows:,} rows: skipped (needs ~{gib:.0f} GiB)", flush=True)
        continue
      todo.append((rows, optimizer, 0, args.preset))
  for r in _scale_points(todo, steps, args.quick, args.devices):
    scale.append(r)
    ms, rss = r.get("step_ms", float("nan")), r.get("peak_rss_gib", float("nan"))
    print(f"  {r['optimizer']} {r['table_rows']:,} rows: {ms:.1f} ms/step, peak RSS {rss:.2f} GiB",
          flush=True)  # fmt: skip
  headers = ["optimizer", "table rows", "table GiB", "step ms", "train samples/s",
             "score samples/s", "peak RSS GiB"]  # fmt: skip
  table = []
  for r in scale:
    gib = r["table_rows"] * embed_dim * 4 / 2**30
    if "step_ms" not in r:
      why = f"skipped: needs ~{r['skipped_gib']:.0f} GiB" if "skipped_gib" in r else "failed"
      table.append([r["optimizer"], f"{r['table_rows']:,}", f"{gib:.2f}", why, "-", "-", "-"])
      continue
    table.append([r["optimizer"], f"{r['table_rows']:,}", f"{gib:.2f}", common.fmt(r["step_ms"]),
                  f"{r['train_samples_per_s']:,.0f}", f"{r['score_samples_per_s']:,.0f}",
                  f"{r['peak_rss_gib']:.2f}"])  # fmt: skip
  print()
  print(common.markdown_table(headers, table))

  print("\nGoals")
  paper = [r for r in results if r["preset"] == args.preset]
  best = max(paper, key=lambda r: r["fraction_of_peak"] or 0.0)
  if best["fraction_of_peak"] is not None:
    verdict = "PASS" if best["fraction_of_peak"] >= 0.25 else "FAIL"
    print(f"- paper-preset train step at >= 25% of matmul peak: {best['fraction_of_peak']:.0%} "
          f"at batch {best['batch_size']} ({verdict})")  # fmt: skip
  for optimizer in ("rowwise_adagrad", "lazy_adam"):
    done = sorted((r for r in scale if r["optimizer"] == optimizer and "step_ms" in r),
                  key=lambda r: r["table_rows"])  # fmt: skip
    small = [r for r in done if r["table_rows"] == 10_000]
    big = [r for r in done if r["table_rows"] == 10_000_000]
    if small and big:
      ratio = big[0]["step_ms"] / small[0]["step_ms"]
      verdict = "PASS" if ratio <= 1.15 else "FAIL"
      print(f"- {optimizer}: step at 10M rows / step at 10k rows = {ratio:.2f} (<= 1.15: "
            f"{verdict})")  # fmt: skip
  huge = [r for r in scale if r["table_rows"] >= 100_000_000 and "step_ms" in r]
  for r in huge:
    print(f"- {r['optimizer']} trains a {r['table_rows']:,}-row d={embed_dim} table: "
          f"{r['step_ms']:.1f} ms/step, peak RSS {r['peak_rss_gib']:.2f} GiB")  # fmt: skip
  history = None if args.skip_history else history_section(args, mesh, steps)
  print()
  common.write_result({"backend": common.backend_info(mesh), "matmul_peak_gflops": peak,
                       "steps": steps, "results": results, "scale": scale,
                       "history": history}, args, common.backend_file("train_bench"))  # fmt: skip


if __name__ == "__main__":
  main()
