"""Start-up of a continued run (`--init-from`) against a fresh run's, on a large table (#23).

  python -m benchmarks.init_from_startup [--rows 10000000] [--growth 0.1] [--preset criteo_paper]
                                         [--embedding-optimizer rowwise_adagrad] [--repeats 3]

Goal (issue 23): the start-up of `--init-from` on a 10M-row table <= 2x a fresh
run's start-up.

Start-up is what loop.train does between the prepared data and the first
train step; data preparation (the same work for both, and for a continued run
the vocabulary growth) is left out:

  fresh      steps.build and the jitted init (compiled and run): the fresh init
  continued  the same (new rows come from it), then continuation.start_state:
             the source checkpoint's seal checked (SHA-256 of every file), its
             arrays read once into host memory, the table and its row-optimizer
             state grown and placed row-sharded

The source is a checkpoint of the same model whose table has rows / (1 + growth)
rows, its floats random (the optimizer state too, so that its files are as
large as a trained model's), written first (not timed; it is then in the page
cache, as a checkpoint just delivered is). The model is 39 vocabulary fields
(Criteo's count) of equal blocks; each grows by the same fraction. Fresh and
continued start-ups alternate --repeats times (medians). The first train step
(compiled and run) follows either alike and is reported apart. `peak_rss_gib`
is the process's resident high-water mark over one continued start-up,
`fresh_peak_rss_gib` over one fresh start-up (each reset before it where Linux
allows; both include the process's own ~0.5 GiB), `peak_over_state` the first
over the state's bytes. JSON with --record (benchmarks/results/) or --json.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import shutil
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks import common
from gin_jax import config as config_lib
from gin_jax import data
from gin_jax import models as model_lib
from gin_jax.training import checkpointing, continuation, partitioning, stages, steps

GOAL_RATIO = 2.0
SOURCE_STEP = 1


def blocks(rows: int) -> data.DatasetMeta:
  """A dataset of CRITEO_FIELDS vocabulary fields, `rows` table rows in equal blocks."""
  n = common.CRITEO_FIELDS
  sizes = [rows // n + (i < rows % n) for i in range(n)]
  offsets = [sum(sizes[:i]) for i in range(n)]
  fields = [
    data.FieldSpec(f"C{i}", "categorical", "vocab", offset, size)
    for i, (offset, size) in enumerate(zip(offsets, sizes))
  ]
  return data.DatasetMeta("criteo", fields, rows, {}, {}, {}, {}, {})


def spec_of(cfg, meta: data.DatasetMeta, mesh) -> model_lib.ModelSpec:
  padded = model_lib.padded_table_rows(meta.num_table_rows, partitioning.num_shards(mesh))
  return model_lib.ModelSpec(cfg.model, meta.num_fields, meta.num_table_rows, padded)


def write_source(cfg, meta: data.DatasetMeta, mesh, root: Path) -> continuation.Source:
  """A checkpoint of the model on `meta`'s table under root/checkpoints, as a Source."""
  spec = spec_of(cfg, meta, mesh)
  state = _trained_like(steps.build(spec, cfg.train, mesh).abstract_state)
  checkpointing.save(checkpointing.manager(root / "checkpoints", None), SOURCE_STEP, state, {})
  model = {"model": {"num_rows": spec.num_rows, "padded_rows": spec.padded_rows}}
  return continuation.Source(root, SOURCE_STEP, model, meta, cfg)


def _trained_like(abstract):
  """A state of `abstract`'s shapes and shardings: floats uniform in [0, 1) (optimizer
  state too, so its files are as large and as slow to hash and read as a trained
  model's), masks all kept, integers 0."""
  leaves, tree = jax.tree.flatten(abstract)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  uniform = jax.jit(jax.random.uniform, static_argnums=(1, 2))

  def leaf(key, x):
    if jnp.issubdtype(x.dtype, jnp.floating):
      return jax.device_put(uniform(key, x.shape, x.dtype), x.sharding)
    return jnp.full(x.shape, x.dtype == bool, x.dtype, device=x.sharding)

  return jax.tree.unflatten(tree, [leaf(k, x) for k, x in zip(keys, leaves)])


def fresh_startup(cfg, spec, mesh):
  """(step functions, fresh state, seconds): build and init, as a fresh run starts."""
  start = time.perf_counter()
  fns = steps.build(spec, cfg.train, mesh)
  state = common.block(fns.init(stages.init_key(cfg.train.seed, stages.plan("single")[0])))
  return fns, state, time.perf_counter() - start


def _reset_peak_rss() -> bool:
  try:  # Linux: "5" resets the VmHWM of this process
    Path("/proc/self/clear_refs").write_text("5")
    return True
  except OSError:
    return False


def _peak_rss_gib() -> float | None:
  try:
    status = Path("/proc/self/status").read_text().splitlines()
  except OSError:
    return None
  kib = next(int(x.split()[1]) for x in status if x.startswith("VmHWM:"))
  return kib / 2**20


def run(cfg, rows: int, growth: float, repeats: int, scratch: Path) -> dict:
  """Every start-up measured, their medians and the goal."""
  mesh = partitioning.make_mesh()
  old_meta, new_meta = blocks(round(rows / (1 + growth))), blocks(rows)
  shutil.rmtree(scratch / "source", ignore_errors=True)
  source = write_source(cfg, old_meta, mesh, scratch / "source")
  gc.collect()
  seal = time.perf_counter()
  checkpointing.verify_seal(source.run / "checkpoints" / str(SOURCE_STEP))
  seal_s = time.perf_counter() - seal
  spec = spec_of(cfg, new_meta, mesh)
  fresh_s, init_s, grow_s, peak, fresh_peak = [], [], [], None, None
  fns = state = None
  for _ in range(repeats):
    del fns, state  # one state at a time
    gc.collect()
    reset = _reset_peak_rss()
    fns, state, seconds = fresh_startup(cfg, spec, mesh)
    fresh_s.append(seconds)
    fresh_peak = _peak_rss_gib() if reset else None
    del fns, state
    gc.collect()
    reset = _reset_peak_rss()
    fns, state, seconds = fresh_startup(cfg, spec, mesh)
    began = time.perf_counter()
    state = common.block(continuation.start_state(source, state, fns, new_meta, cfg))
    init_s.append(seconds)
    grow_s.append(time.perf_counter() - began)
    peak = _peak_rss_gib() if reset else None
  began = time.perf_counter()
  batch = common.criteo_batch(mesh, cfg.train.batch_size, spec.num_rows)
  common.block(fns.train_step(state, batch))
  first_step_s = time.perf_counter() - began
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  fresh, init, grow = (statistics.median(x) for x in (fresh_s, init_s, grow_s))
  ratio = (init + grow) / fresh
  return {
    "backend": common.backend_info(),
    "preset": cfg.name,
    "embed_dim": cfg.model.embed_dim,
    "embedding_optimizer": cfg.train.embedding_optimizer,
    "source_rows": old_meta.num_table_rows,
    "table_rows": new_meta.num_table_rows,
    "state_gib": state_bytes / 2**30,
    "repeats": repeats,
    "fresh_s": fresh,
    "continued_s": init + grow,
    "continued_init_s": init,
    "restore_and_grow_s": grow,
    "seal_check_s": seal_s,
    "first_step_s": first_step_s,
    "peak_rss_gib": peak,
    "fresh_peak_rss_gib": fresh_peak,
    "peak_over_state": None if peak is None else peak * 2**30 / state_bytes,
    "samples": {"fresh_s": fresh_s, "continued_init_s": init_s, "restore_and_grow_s": grow_s},
    "goal": f"continued start-up <= {GOAL_RATIO} x fresh at {new_meta.num_table_rows:,} rows",
    "ratio": ratio,
    "pass": ratio <= GOAL_RATIO,
  }


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(prog="python -m benchmarks.init_from_startup", description=__doc__)
  p.add_argument("--rows", type=int, default=10_000_000, help="the continued run's table rows")
  p.add_argument("--growth", type=float, default=0.1, help="rows added, a fraction of the source's")
  p.add_argument("--preset", default="criteo_paper", choices=sorted(config_lib.PRESETS))
  p.add_argument(
    "--embedding-optimizer",
    choices=config_lib.EMBEDDING_OPTIMIZERS,
    help="train.embedding_optimizer (default: the preset's)",
  )
  p.add_argument("--repeats", type=int, default=3, help="fresh / continued start-ups, alternating")
  p.add_argument(
    "--scratch", default="/tmp/gin_jax_init_from_startup", help="the source checkpoint"
  )
  common.add_output_flags(p, "init_from_startup_<backend>.json")
  args = p.parse_args(argv)
  cfg = config_lib.preset(args.preset)
  train = dataclasses.replace(cfg.train, stages="single")
  if args.embedding_optimizer:
    train = dataclasses.replace(train, embedding_optimizer=args.embedding_optimizer)
  cfg = dataclasses.replace(cfg, train=train)
  scratch = Path(args.scratch)
  scratch.mkdir(parents=True, exist_ok=True)
  result = run(cfg, args.rows, args.growth, args.repeats, scratch)
  shutil.rmtree(scratch / "source", ignore_errors=True)
  r = result
  print(
    common.markdown_table(
      [
        "table rows",
        "fresh s",
        "continued s",
        "of which restore + grow s",
        "seal check s",
        "first step s",
        "ratio",
        "peak RSS GiB (fresh)",
        "state GiB",
      ],
      [
        [
          f"{r['source_rows']:,} -> {r['table_rows']:,}",
          f"{r['fresh_s']:.2f}",
          f"{r['continued_s']:.2f}",
          f"{r['restore_and_grow_s']:.2f}",
          f"{r['seal_check_s']:.2f}",
          f"{r['first_step_s']:.2f}",
          f"{r['ratio']:.2f}",
          f"{common.fmt(r['peak_rss_gib'])} ({common.fmt(r['fresh_peak_rss_gib'])})",
          f"{r['state_gib']:.2f}",
        ]
      ],
    )  # fmt: skip
  )
  print(f"goal: {r['goal']}: {r['ratio']:.2f} ({'pass' if r['pass'] else 'FAIL'})")
  common.write_result(result, args, common.backend_file("init_from_startup"))
  return result


if __name__ == "__main__":
  main()
