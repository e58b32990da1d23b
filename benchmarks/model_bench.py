"""Training and scoring throughput of every model (GIN and the baselines) at one preset.

  python -m benchmarks.model_bench [--preset criteo_paper] [--batch 1024] [--rows 100000]
      [--models all|gin,dcnv2,...] [--target-s 2] [--json OUT]

Each model is the preset with only model.arch changed (Table 4 defaults for
its own settings), on Criteo-shaped synthetic batches already on the device:
samples/s of the jitted, sharded, donated train step (row-sparse table
update, as `python -m train` runs it) and of the scoring step, the dense
parameter count and XLA's FLOPs for one forward + backward of the loss. The
models are timed round-robin (common.time_interleaved), so that load on a
shared machine is spread over all of them: compare rows of one run.
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from benchmarks import common
from benchmarks.paper import DISPLAY
from gin_jax import config as config_lib
from gin_jax import models as model_lib
from gin_jax.training import partitioning
from gin_jax.training import steps as steps_lib

FIELDS = common.CRITEO_FIELDS
MODELS = (
  "gin", "lr", "fm", "deepfm", "ipnn", "opnn", "fwfm", "afm", "dcn", "dcnv2", "xdeepfm", "autoint",
)  # fmt: skip


class _Runner:
  """One model's compiled steps and live state; `train()` and `score()` take one step."""

  def __init__(self, cfg, mesh, batch_size: int, rows: int):
    spec = model_lib.ModelSpec(
      cfg.model, FIELDS, rows, model_lib.padded_table_rows(rows, partitioning.num_shards(mesh))
    )
    self.fns = steps_lib.build(spec, cfg.train, mesh)
    self.state = self.fns.init(jax.random.key(0))
    self.batches = [common.criteo_batch(mesh, batch_size, rows, seed) for seed in range(4)]
    self.step = 0
    params = self.fns.abstract_state["params"]
    self.dense_params = model_lib.count_params(model_lib.dense_params(params))
    self.flops = common.loss_flops(self.fns, self.state, self.batches[0])

  def train(self):
    self.state, metrics = self.fns.train_step(self.state, self.batches[self.step % 4])
    self.step += 1
    return metrics

  def score(self):
    s = self.state
    return self.fns.eval_step(s["params"], s["batch_stats"], s["masks"], self.batches[0])


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="criteo_paper", help="config preset (default criteo_paper)")
  p.add_argument("--models", default="all", help=f"'all' or a list of {','.join(MODELS)}")
  p.add_argument("--batch", type=int, default=1024, help="global batch size")
  p.add_argument("--rows", type=int, default=100_000, help="embedding-table rows")
  p.add_argument("--target-s", type=float, default=2.0, help="timed seconds per model and step")
  common.add_output_flags(p, "model_bench_<backend>.json")
  common.add_devices_flag(p)
  argv = sys.argv[1:] if argv is None else argv
  args = p.parse_args(argv)
  models = list(MODELS) if args.models == "all" else args.models.split(",")

  backend = jax.default_backend()
  mesh = partitioning.make_mesh(common.local_devices(args.devices))
  print(f"backend {backend}, {jax.device_count()} device(s); preset {args.preset}, "
        f"batch {args.batch}, {args.rows:,} table rows", flush=True)  # fmt: skip
  runners = {}
  for arch in models:
    cfg = config_lib.override(
      config_lib.preset(args.preset), {"model.arch": arch, "train.stages": "gin"}
    )
    runners[arch] = _Runner(cfg, mesh, args.batch, args.rows)
    print(f"  compiled {arch}", flush=True)

  kinds = ("train", "score")
  calls = {(arch, kind): getattr(r, kind) for arch, r in runners.items() for kind in kinds}
  iters = {key: common.warm_up(call, target_s=args.target_s)[1] for key, call in calls.items()}
  samples = common.time_interleaved(calls, iters)

  results = []
  for arch, r in runners.items():
    train_s = float(np.median(samples[(arch, "train")]))
    score_s = float(np.median(samples[(arch, "score")]))
    results.append({
      "model": arch,
      "step_ms": train_s * 1e3,
      "train_samples_per_s": args.batch / train_s,
      "score_samples_per_s": args.batch / score_s,
      "dense_params": r.dense_params,
      "loss_gflops_per_step": None if r.flops is None else r.flops / 1e9,
      "timed_steps": len(samples[(arch, "train")]),
    })  # fmt: skip
  gin = next((x for x in results if x["model"] == "gin"), None)
  for x in results:
    x["train_vs_gin"] = (
      None if gin is None else x["train_samples_per_s"] / gin["train_samples_per_s"]
    )

  headers = ["model", "dense params", "fwd+bwd GFLOP/step", "step ms", "train samples/s",
             "x GIN", "score samples/s"]  # fmt: skip
  rows = [
    [DISPLAY.get(x["model"], "GIN"), f"{x['dense_params']:,}",
     common.fmt(x["loss_gflops_per_step"]), common.fmt(x["step_ms"]),
     f"{x['train_samples_per_s']:,.0f}",
     "-" if x["train_vs_gin"] is None else f"{x['train_vs_gin']:.2f}",
     f"{x['score_samples_per_s']:,.0f}"]
    for x in results
  ]  # fmt: skip
  print()
  print(common.markdown_table(headers, rows))
  payload = {
    "command": "python -m benchmarks.model_bench " + " ".join(argv),
    "preset": args.preset,
    "batch_size": args.batch,
    "table_rows": args.rows,
    "fields": FIELDS,
    "results": results,
    "backend": common.backend_info(mesh),
  }
  print()
  common.write_result(payload, args, common.backend_file("model_bench"))
  return payload


if __name__ == "__main__":
  main()
