"""Data-layer throughput: preprocessing rows/s and training-loader batches/s.

  python -m benchmarks.data_bench [--rows N] [--json OUT]

1. Writes a Criteo TSV of N synthetic rows (default 1M, ~260 MB) with the generator.
2. Runs prepare() on it from a cold cache (both passes, all three splits written) in
   a few configurations: the defaults, one parsing thread, and parsed rows spilled to
   disk between the passes (what inputs beyond the in-memory budget get); with
   --gzip also on a gzip copy (compression not timed).
3. Reads the prepared train split with train_iterator at batch 1024 (and eval_batches).

Goals on the 2-core development machine: preprocessing >= 200k rows/s; the loader at
least 3x the training step's sample rate (--step-samples-per-s, 50k by default). The
machine is shared, so the load average at the start is printed with the numbers, and
CPU seconds are reported next to wall seconds.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import tempfile
import time

from absl import flags

from benchmarks import common
from gin_jax.config import DataConfig
from gin_jax.data import SyntheticSpec, eval_batches, pipeline, prepare, synthetic
from gin_jax.data.prepare import default_workers


def _timed(fn, *args, **kwargs):
  """(fn(*args, **kwargs), wall seconds, CPU seconds of this process, all threads)."""
  wall, cpu = time.perf_counter(), time.process_time()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - wall, time.process_time() - cpu


def bench_prepare(path: str, rows: int, workdir: str, configs: dict[str, dict]):
  """Cold-cache prepare() of `path` under each named set of keyword arguments.

  Returns:
    (one result dict per config, the splits prepared by the first config).
  """
  results, first = [], None
  for name, kwargs in configs.items():
    cache = os.path.join(workdir, "cache-" + name.replace(" ", "_").replace(",", ""))
    shutil.rmtree(cache, ignore_errors=True)
    cfg = DataConfig(format="criteo", train=path, split=(0.8, 0.1, 0.1), min_count=2)
    (meta, splits), wall, cpu = _timed(prepare, cfg, cache, progress=False, **kwargs)
    first = first or splits
    assert sum(meta.split_rows.values()) == rows
    results.append(
      {
        "config": name,
        **kwargs,
        "wall_s": wall,
        "cpu_s": cpu,
        "rows_per_s": rows / wall,
        "rows_per_cpu_s": rows / cpu,
        "table_rows": meta.num_table_rows,
      }
    )
  return results, first


def bench_loader(split, batch: int, num_batches: int, workers: list[int]) -> list[dict]:
  """Batches/s of train_iterator (after its first batch) and of eval_batches."""
  results = []
  num_batches = min(num_batches, len(split) // batch - 1)
  for w in workers:
    start = time.perf_counter()
    it = pipeline.train_iterator(split, batch, seed=0, epoch=0, num_workers=w)
    next(it)
    first = time.perf_counter() - start
    _, wall, cpu = _timed(lambda: [next(it) for _ in range(num_batches)])  # noqa: B023
    it.close()
    results.append(
      {
        "loader": f"train_iterator workers={w}",
        "startup_s": first,
        "batches_per_s": num_batches / wall,
        "samples_per_s": num_batches * batch / wall,
        "cpu_s": cpu,
      }
    )
  it = eval_batches(split, batch)
  _, wall, cpu = _timed(lambda: [next(it) for _ in range(num_batches)])
  results.append(
    {
      "loader": "eval_batches",
      "startup_s": 0.0,
      "batches_per_s": num_batches / wall,
      "samples_per_s": num_batches * batch / wall,
      "cpu_s": cpu,
    }
  )
  return results


def main(argv: list[str] | None = None) -> dict:
  """Runs the benchmark; prints a markdown table; returns (and optionally saves) JSON."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic TSV rows")
  parser.add_argument("--json", default=None, help="write the results here")
  parser.add_argument("--batch", type=int, default=1024, help="loader batch size")
  parser.add_argument("--batches", type=int, default=500, help="loader batches timed")
  parser.add_argument("--loader-workers", type=int, nargs="*", default=[0])
  parser.add_argument("--step-samples-per-s", type=float, default=50_000.0)
  parser.add_argument("--workdir", default=None, help="default: a temporary directory")
  parser.add_argument("--gzip", action="store_true", help="also time a gzip copy of the TSV")
  args = parser.parse_args(argv)
  flags.FLAGS.mark_as_parsed()
  workdir = args.workdir or tempfile.mkdtemp(prefix="data_bench_")
  os.makedirs(workdir, exist_ok=True)
  load = os.getloadavg()
  try:
    path = os.path.join(workdir, "criteo.tsv")
    spec = SyntheticSpec(num_rows=args.rows, seed=0)
    data, gen_s, _ = _timed(lambda: synthetic.generate(spec))
    _, write_s, _ = _timed(lambda: synthetic.write_criteo_tsv(path, spec))
    size = os.path.getsize(path)
    workers = default_workers()
    configs = {
      "defaults": {},
      "1 thread": {"workers": 1},
      "spill to disk": {"workers": workers, "spill_memory": 0},
    }
    prep, splits = bench_prepare(path, args.rows, workdir, configs)
    if args.gzip:  # Criteo's day files come gzipped: decompression is in pass 1 only.
      gz = path + ".gz"
      with open(path, "rb") as src, gzip.open(gz, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 1 << 24)
      prep += bench_prepare(gz, args.rows, workdir, {"gzip input": {}})[0]
    loader = bench_loader(splits["train"], args.batch, args.batches, args.loader_workers)
  finally:
    if args.workdir is None:
      shutil.rmtree(workdir, ignore_errors=True)
  headline = prep[0]["rows_per_s"]
  train_loader = loader[0]["samples_per_s"]
  payload = {
    "rows": args.rows,
    "tsv_bytes": size,
    "host_cpus": os.cpu_count(),
    "load_average_at_start": load,
    "default_prepare_threads": workers,
    "generate_s": gen_s,
    "write_tsv_s": write_s - 0.0,
    "prepare": prep,
    "loader": loader,
    "goals": {
      "prepare_rows_per_s": {"goal": 200_000, "measured": headline, "met": headline >= 2e5},
      "loader_samples_per_s": {
        "goal": 3 * args.step_samples_per_s,
        "measured": train_loader,
        "met": train_loader >= 3 * args.step_samples_per_s,
      },
    },
    "positive_rate": float(data.labels.mean()),
  }
  _print(payload, args)
  if args.json:
    common.write_json(args.json, payload)
  return payload


def _print(p: dict, args) -> None:
  mb = p["tsv_bytes"] / 2**20
  print(
    f"\n{p['rows']:,} rows, {mb:.0f} MiB of Criteo TSV; {p['host_cpus']} CPUs, load average "
    f"{p['load_average_at_start'][0]:.2f} at start; generate {p['generate_s']:.1f} s, "
    f"write TSV {p['write_tsv_s']:.1f} s\n"
  )
  rows = [
    [
      r["config"],
      str(r.get("workers", p["default_prepare_threads"])),
      "memory" if r.get("spill_memory", 1) else "disk",
      f"{r['wall_s']:.2f}",
      f"{r['cpu_s']:.2f}",
      f"{r['rows_per_s']:,.0f}",
      f"{r['rows_per_cpu_s']:,.0f}",
    ]
    for r in p["prepare"]
  ]
  headers = ["prepare", "threads", "spill", "wall s", "cpu s", "rows/s", "rows/cpu-s"]
  print(common.markdown_table(headers, rows))
  print()
  rows = [
    [
      r["loader"],
      str(args.batch),
      f"{r['startup_s']:.2f}",
      f"{r['batches_per_s']:,.0f}",
      f"{r['samples_per_s']:,.0f}",
    ]
    for r in p["loader"]
  ]
  print(common.markdown_table(["loader", "batch", "startup s", "batches/s", "samples/s"], rows))
  print()
  for name, g in p["goals"].items():
    verdict = "met" if g["met"] else "NOT met"
    print(f"goal {name}: {g['measured']:,.0f} vs {g['goal']:,.0f} -> {verdict}")


if __name__ == "__main__":
  main()
