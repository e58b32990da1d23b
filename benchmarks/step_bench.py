"""Where a train step's time goes on an accelerator: device, host dispatch, or launches.

  python -m benchmarks.step_bench [--preset criteo_bars] [--rows 1800000] [--steps 300]

For each embedding optimizer, on device-resident batches (Criteo-shaped, ids
uniform over --rows): the step pipelined (asynchronous dispatch, as training
runs it), the host's own time to issue those steps, the step run synchronously
(block on each), and k steps per call (a scan over k stacked batches: one
dispatch, no host in between). Also counts the kernels-to-be of the compiled
step (top-level instructions of the optimized HLO's entry that launch work).
If pipelined ~ synchronous >> k-per-call, the per-step host/launch overhead
dominates; if all agree, the device work itself does. Prints a table; JSON with --record or --json.
"""

from __future__ import annotations

import argparse
import re
import time

import jax

from benchmarks import common
from gin_jax import config as config_lib
from gin_jax import models as model_lib
from gin_jax.training import partitioning
from gin_jax.training import steps as steps_lib

_OPS = "fusion|custom-call|sort|scatter|gather|while|copy|dynamic-update-slice|reduce|dot"
_LAUNCH = re.compile(rf"^\s*\S+ = \S+ ({_OPS})\(", re.M)


def _entry_launches(hlo: str) -> int:
  entry = hlo[hlo.index("ENTRY") :]
  entry = entry[: entry.index("\n}")]
  return len(_LAUNCH.findall(entry))


def bench(preset: str, optimizer: str, rows: int, batch: int, steps: int, ks: list[int]) -> dict:
  mesh = partitioning.make_mesh()
  cfg = config_lib.override(config_lib.preset(preset), {"train.embedding_optimizer": optimizer})
  spec = model_lib.ModelSpec(
    cfg.model, common.CRITEO_FIELDS, rows,
    model_lib.padded_table_rows(rows, partitioning.num_shards(mesh)),
  )  # fmt: skip
  fns = steps_lib.build(spec, cfg.train, mesh)
  state = fns.init(jax.random.key(0))
  batches = [common.criteo_batch(mesh, batch, rows, seed) for seed in range(16)]
  hlo = fns.train_step.lower(state, batches[0]).compile().as_text()
  out = {"optimizer": optimizer, "launches": _entry_launches(hlo)}
  for i in range(5):
    state, metrics = fns.train_step(state, batches[i % 16])
  common.block(metrics)

  start = time.perf_counter()
  for i in range(steps):
    state, metrics = fns.train_step(state, batches[i % 16])
  issued = time.perf_counter() - start
  common.block((state["step"], metrics))
  out["pipelined_ms"] = (time.perf_counter() - start) / steps * 1e3
  out["host_issue_ms"] = issued / steps * 1e3

  start = time.perf_counter()
  for i in range(steps // 3):
    state, metrics = fns.train_step(state, batches[i % 16])
    common.block(metrics)
  out["synchronous_ms"] = (time.perf_counter() - start) / (steps // 3) * 1e3

  for k in ks:
    stacked = jax.tree.map(lambda *x: jax.numpy.stack(x), *[batches[i % 16] for i in range(k)])

    @jax.jit
    def many(state, stacked):
      return jax.lax.scan(lambda s, b: fns.train_step(s, b), state, stacked)

    state, metrics = many(state, stacked)  # compile
    common.block(metrics)
    calls = max(1, steps // k)
    start = time.perf_counter()
    for _ in range(calls):
      state, metrics = many(state, stacked)
    common.block(metrics)
    out[f"scan{k}_ms"] = (time.perf_counter() - start) / (calls * k) * 1e3
  return out


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="criteo_bars")
  p.add_argument("--rows", type=int, default=1_800_000)
  p.add_argument("--batch", type=int, help="default: the preset's")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--optimizers", default="rowwise_adagrad,lazy_adam,adam")
  p.add_argument("--k", default="4,16", help="steps per call of the scanned variants")
  common.add_output_flags(p, "step_bench_<backend>.json")
  args = p.parse_args(argv)
  batch = args.batch or config_lib.preset(args.preset).train.batch_size
  ks = [int(k) for k in args.k.split(",") if k]
  results = [
    bench(args.preset, o, args.rows, batch, args.steps, ks) for o in args.optimizers.split(",")
  ]
  cols = ["launches", "pipelined_ms", "host_issue_ms", "synchronous_ms"]
  cols += [f"scan{k}_ms" for k in ks]
  print(f"{args.preset}, batch {batch}, {args.rows:,} table rows")
  print(common.markdown_table(
    ["optimizer"] + cols,
    [[r["optimizer"]] + [common.fmt(r[c]) if c != "launches" else r[c] for c in cols]
     for r in results],
  ))  # fmt: skip
  payload = {"backend": common.backend_info(), "args": vars(args), "results": results}
  common.write_result(payload, args, common.backend_file("step_bench"))
  return payload


if __name__ == "__main__":
  main()
