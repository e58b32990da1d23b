"""The row optimizers' own step: catch-up of idle rows + update, for one batch's rows.

  python -m benchmarks.row_optimizer_bench [--rows 50000] [--dim 10] [--max-gap 500]

Times the jitted `RowOptimizer.catch_up` + `update` on U gathered rows (the
unique rows of a batch) whose idle gaps are drawn from [0, --max-gap], for:
rowwise_adagrad; lazy_adam with its exact replay as a while loop ("loop", the
iterations the longest gap needs) and as straight-line code ("unrolled", always
catch_up_steps masked iterations); lazy_adam with no replay (catch_up_steps 0,
closed form only). On a GPU a while loop returns to the host every iteration to
test its condition, so the two replays can rank differently there than on a CPU.
Prints a table; JSON with --record or --json.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from gin_jax.training import embedding

VARIANTS = {
  "rowwise_adagrad": (embedding.RowwiseAdagrad, {}),
  "lazy_adam loop": (embedding.LazyAdam, dict(replay="loop")),
  "lazy_adam unrolled": (embedding.LazyAdam, dict(replay="unrolled")),
  "lazy_adam no replay": (embedding.LazyAdam, dict(catch_up_steps=0)),
}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rows", type=int, default=50_000, help="U: unique rows in the batch")
  p.add_argument("--dim", type=int, default=10)
  p.add_argument("--max-gap", type=int, default=500, help="idle gaps drawn from [0, max-gap]")
  p.add_argument("--l2", type=float, default=0.01)
  common.add_output_flags(p, "row_optimizer_bench_<backend>.json")
  args = p.parse_args(argv)

  rng = np.random.default_rng(0)
  u, d, count = args.rows, args.dim, 10_000
  rows = {"t": jnp.asarray(rng.normal(0, 0.01, (u, d)), jnp.float32)}
  grads = {"t": jnp.asarray(rng.normal(0, 0.01, (u, d)), jnp.float32)}
  gaps = rng.integers(0, args.max_gap + 1, u)
  last = jnp.asarray(count - 1 - gaps, jnp.int32)
  valid = jnp.ones((u,), bool)
  m = jnp.asarray(rng.normal(0, 1e-3, (u, d)), jnp.float32)
  v = jnp.asarray(rng.uniform(1e-8, 1e-6, (u, d)), jnp.float32)
  acc = jnp.asarray(rng.uniform(1e-6, 1e-3, u), jnp.float32)
  within = float(np.mean(gaps <= 64))

  results, table = {}, []
  for name, (cls, kwargs) in VARIANTS.items():
    opt = cls(l2=args.l2, **kwargs)
    slots = {"t": {"acc": acc}} if opt.name == "rowwise_adagrad" else {"t": {"m": m, "v": v}}

    @jax.jit
    def step(rows, slots, opt=opt):
      r, s = opt.catch_up(rows, slots, last, valid, jnp.int32(count), 1e-3)
      return opt.update(r, grads, s, jnp.int32(count), 1e-3)

    seconds = common.time_fn(step, rows, slots, warmup=3, iters=30)
    results[name] = seconds
    table.append([name, f"{seconds * 1e3:.3f}", f"{seconds / results['rowwise_adagrad']:.2f}"])
  print(f"U={u:,} rows of {d}; gaps 0..{args.max_gap} ({within:.0%} within 64 steps)")
  print(common.markdown_table(["row optimizer", "ms", "x rowwise_adagrad"], table))
  payload = {"backend": common.backend_info(), "args": vars(args), "seconds": results}
  common.write_result(payload, args, common.backend_file("row_optimizer_bench"))
  return payload


if __name__ == "__main__":
  main()
