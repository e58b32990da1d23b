"""Helpers shared by the benchmark scripts: timing, matmul peak, XLA cost and memory, output.

Every benchmark reports its times against a matmul peak measured in the same process
(`measure_matmul_peak`), its FLOPs and temporary memory as XLA compiled them
(`compile_with_stats`), and writes a markdown table to stdout plus a JSON file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def block(tree: Any) -> Any:
  """Waits until every array in `tree` is computed; returns `tree`."""
  return jax.block_until_ready(tree)


def time_fn(fn: Callable[..., Any], *args: Any, warmup: int = 2, iters: int = 10) -> float:
  """Median wall-clock seconds of `fn(*args)`, blocking on its outputs.

  Args:
    fn: the function to time (a jitted function or a compiled executable).
    *args: its arguments, already on the device.
    warmup: untimed calls first (compilation, allocator and page-fault warm-up).
    iters: timed calls; the median is returned.

  Returns:
    The median of `iters` timed calls, in seconds.
  """
  for _ in range(warmup):
    block(fn(*args))
  times = []
  for _ in range(max(1, iters)):
    start = time.perf_counter()
    block(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def warm_up(
  fn: Callable[..., Any],
  *args: Any,
  target_s: float = 1.0,
  min_iters: int = 3,
  max_iters: int = 20,
) -> tuple[Any, int]:
  """Warms `fn(*args)` up and sizes its timing to about `target_s` seconds.

  The first call is timed to size the run; a fast function gets a second, untimed
  call (allocator and page-fault warm-up).

  Args:
    fn: the function to time (already compiled).
    *args: its arguments.
    target_s: wall-clock budget for the timed calls.
    min_iters: fewest timed calls, however slow `fn` is.
    max_iters: most timed calls, however fast `fn` is.

  Returns:
    (the first call's output, how many timed calls fit in `target_s`).
  """
  start = time.perf_counter()
  output = block(fn(*args))
  first_s = time.perf_counter() - start
  if first_s < target_s / 4:
    block(fn(*args))
  return output, int(np.clip(target_s / max(first_s, 1e-6), min_iters, max_iters))


def time_interleaved(
  calls: dict[Any, Callable[[], Any]], iters: dict[Any, int], rounds: int = 5
) -> dict[Any, list[float]]:
  """Seconds of each timed call of several warmed-up zero-argument functions, round-robin.

  On a machine shared with other jobs, load comes and goes; timing every function a
  little in each of several rounds spreads a burst over all of them, so their
  ratios stay fair where back-to-back timing would charge it to whichever ran then.

  Args:
    calls: key -> zero-argument function (already compiled and warmed up).
    iters: key -> total timed calls, spread evenly over up to `rounds` rounds.
    rounds: passes over all functions.

  Returns:
    key -> the list of measured seconds (take the median).
  """
  by_round = time_rounds(calls, iters, rounds)
  return {key: [t for times in by_round[key] for t in times] for key in calls}


def time_rounds(
  calls: dict[Any, Callable[[], Any]], iters: dict[Any, int], rounds: int = 5
) -> dict[Any, list[list[float]]]:
  """time_interleaved's timings, kept apart by round: key -> [seconds of round 0, ...].

  A function timed fewer than `rounds` times is absent from the last rounds; one timed
  at least `rounds` times is in every round, so two such functions can be compared
  round by round (paired_ratio).
  """
  samples: dict[Any, list[list[float]]] = {key: [] for key in calls}
  done = dict.fromkeys(calls, 0)
  for _ in range(rounds):
    for key, call in calls.items():
      times = []
      for _ in range(min(math.ceil(iters[key] / rounds), iters[key] - done[key])):
        start = time.perf_counter()
        block(call())
        times.append(time.perf_counter() - start)
      done[key] += len(times)
      if times:
        samples[key].append(times)
  return samples


def paired_ratio(slow: Sequence[Sequence[float]], fast: Sequence[Sequence[float]]) -> float:
  """Median over rounds of (slow's median time / fast's) within each round (time_rounds).

  Load from other jobs comes and goes over seconds: the two functions of a round
  were timed moments apart, so their ratio is fair even when the round was slow.
  """
  ratios = [np.median(a) / np.median(b) for a, b in zip(slow, fast) if a and b]
  return float(np.median(ratios)) if ratios else float("nan")


def measure_matmul_peak(dtype: Any = jnp.float32, n: int | None = None, iters: int = 5) -> float:
  """Achieved GFLOP/s of one large square `jnp.dot` on the default device.

  This is the ceiling the benchmarks compare against: what this machine's XLA
  reaches on the friendliest shape, measured in the same process (so load from
  other users of a shared machine shows up in both).

  Args:
    dtype: operand dtype (float32, bfloat16, ...).
    n: matrix size; default 2048 on CPU and 8192 on accelerators.
    iters: timed calls (median).

  Returns:
    GFLOP/s, counting 2 n^3 FLOPs per product.
  """
  if n is None:
    n = 2048 if jax.default_backend() == "cpu" else 8192
  key_a, key_b = jax.random.split(jax.random.key(0))
  a_nn = jax.random.normal(key_a, (n, n), jnp.float32).astype(dtype)
  b_nn = jax.random.normal(key_b, (n, n), jnp.float32).astype(dtype)
  matmul = jax.jit(jnp.dot).lower(a_nn, b_nn).compile()
  seconds = time_fn(matmul, a_nn, b_nn, warmup=2, iters=iters)
  return 2.0 * n**3 / seconds / 1e9


def _flops_of(cost: Any) -> float | None:
  # cost_analysis() is a dict on current jax, a one-element list of dicts on older
  # releases, and None (or raises) on backends without a cost model.
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def compiled_stats(compiled: Any) -> dict[str, float | int | None]:
  """FLOPs, bytes accessed and memory sizes of a compiled executable.

  Args:
    compiled: the result of `jax.jit(f).lower(...).compile()`.

  Returns:
    {"flops", "bytes_accessed", "temp_bytes", "argument_bytes", "output_bytes"};
    a value is None where the backend does not report it.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # some backends raise instead of returning None
    cost = None
  bytes_accessed = None
  flat = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  if isinstance(flat, dict) and "bytes accessed" in flat:
    bytes_accessed = float(flat["bytes accessed"])
  try:
    memory = compiled.memory_analysis()
  except Exception:
    memory = None

  def size(name):
    value = getattr(memory, name, None) if memory is not None else None
    return int(value) if value is not None else None

  return {
    "flops": _flops_of(cost),
    "bytes_accessed": bytes_accessed,
    "temp_bytes": size("temp_size_in_bytes"),
    "argument_bytes": size("argument_size_in_bytes"),
    "output_bytes": size("output_size_in_bytes"),
  }


def compile_with_stats(jitted: Any, *args: Any) -> tuple[Any, dict[str, float | int | None]]:
  """Lowers and compiles `jitted` for `args` (nothing runs, nothing is allocated).

  Args:
    jitted: a `jax.jit`-wrapped function.
    *args: example arguments (arrays or `jax.ShapeDtypeStruct`s).

  Returns:
    (compiled executable, `compiled_stats` of it).
  """
  compiled = jitted.lower(*args).compile()
  return compiled, compiled_stats(compiled)


def compiled_cost(jitted: Any, *args: Any) -> tuple[float | None, int | None]:
  """(FLOPs, peak temporary bytes) of `jitted` at `args`, as XLA compiled it.

  Args:
    jitted: a `jax.jit`-wrapped function.
    *args: example arguments (arrays or `jax.ShapeDtypeStruct`s).

  Returns:
    (cost_analysis()["flops"], memory_analysis().temp_size_in_bytes), each None
    where the backend does not report it.
  """
  _, stats = compile_with_stats(jitted, *args)
  return stats["flops"], stats["temp_bytes"]


def backend_info(mesh: Any = None) -> dict[str, Any]:
  """What the numbers were measured on: backend, device, versions, host (and with
  `mesh`, the devices the benchmark ran on: mesh_devices)."""
  device = jax.devices()[0]
  return {
    **({"mesh_devices": mesh.size} if mesh is not None else {}),
    "backend": jax.default_backend(),
    "device_kind": device.device_kind,
    "device_count": jax.device_count(),
    "jax_version": jax.__version__,
    "python": platform.python_version(),
    "host_cpus": os.cpu_count(),
    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub markdown table; numbers are expected pre-formatted as strings."""
  cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
  lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
  lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
  return "\n".join(lines)


def write_json(path: str, payload: Any) -> None:
  """Writes `payload` as indented JSON, creating the parent directory."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as out:
    json.dump(payload, out, indent=1, sort_keys=False, default=_json_default)
    out.write("\n")


RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def add_output_flags(parser: Any, committed: str) -> None:
  """`--record` | `--json PATH`: where a benchmark writes its JSON. Neither: nowhere.

  No benchmark writes into benchmarks/results/ unless asked, so a quick try never
  replaces a committed result that the docs cite.

  Args:
    parser: the script's argparse parser.
    committed: the committed file's name under benchmarks/results/, as help shows it
      (e.g. `einsum_bench_<backend>.json`).
  """
  group = parser.add_mutually_exclusive_group()
  group.add_argument(
    "--record",
    action="store_true",
    help=f"write the committed result, benchmarks/results/{committed} (what the docs cite)",
  )
  group.add_argument("--json", metavar="PATH", help="write the results to PATH instead")


def backend_file(bench: str) -> str:
  """`<bench>_<backend>.json`: the committed result's name for this backend."""
  return f"{bench}_{jax.default_backend()}.json"


def output_path(args: Any, committed: str) -> str | None:
  """The file add_output_flags' flags name: results/`committed` with --record, --json's
  PATH, or None (write nothing)."""
  if getattr(args, "record", False):
    return os.path.join(RESULTS_DIR, committed)
  return getattr(args, "json", None)


def write_result(payload: Any, args: Any, committed: str) -> str | None:
  """Writes a benchmark's JSON where add_output_flags' flags say, and says where (or that
  it wrote nothing)."""
  out = output_path(args, committed)
  if out is None:
    print(
      f"(not written: --json PATH writes the results, --record updates benchmarks/results/"
      f"{committed})"
    )
    return None
  write_json(out, payload)
  print(f"wrote {out}")
  return out


def _json_default(value: Any) -> Any:
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"not JSON serialisable: {type(value)}")


def fmt(value: float | None, digits: int = 3) -> str:
  """A number with `digits` significant digits, or '-' for None."""
  if value is None:
    return "-"
  return f"{value:.{digits}g}"


CRITEO_FIELDS = 39  # 13 numeric + 26 categorical


def criteo_batch(
  mesh, batch_size: int, rows: int, seed: int = 0, history: int = 0, pooling: str = "mean"
) -> dict:
  """A Criteo-shaped batch of ids drawn uniformly over `rows`, placed on the mesh.

  `history` > 0 adds one multi-valued field of that many slots: 1..history values
  per row (uniform), the rest padding (id `rows`); mean-pooled (each value 1/count)
  or, with pooling "attention", each value's slot 1 (the mask the unit weighs).
  """
  from gin_jax.training import partitioning

  rng = np.random.default_rng(seed)
  ids = rng.integers(0, rows, (batch_size, CRITEO_FIELDS)).astype(np.int32)
  values = np.ones((batch_size, CRITEO_FIELDS), np.float32)
  if history:
    count = rng.integers(1, history + 1, batch_size)
    present = np.arange(history)[None, :] < count[:, None]
    slots = np.where(present, rng.integers(0, rows, (batch_size, history)), rows)
    ids = np.concatenate([ids, slots.astype(np.int32)], axis=1)
    weight = 1.0 if pooling == "attention" else 1.0 / count[:, None]
    weights = np.where(present, weight, 0.0).astype(np.float32)
    values = np.concatenate([values, weights], axis=1)
  local = {"ids": ids, "values": values, "labels": rng.integers(0, 2, batch_size).astype("f4")}
  return partitioning.shard_batch(mesh, local)


def loss_flops(fns, state, batch) -> float | None:
  """XLA's FLOPs for forward + backward of the loss alone (no optimizer update)."""
  from gin_jax import models as model_lib

  def loss(params):
    logits, _ = model_lib.apply_model(
      fns.graphdef, params, state["batch_stats"], batch["ids"], batch["values"], state["masks"],
      train=True, dropout_key=jax.random.key(0),
    )  # fmt: skip
    return jnp.mean(jax.nn.softplus(logits) - batch["labels"] * logits)

  _, stats = compile_with_stats(jax.jit(jax.grad(loss)), state["params"])
  return stats["flops"]


def add_devices_flag(p) -> None:
  """--devices N: the benchmark on this process's first N devices (default: all); an N
  this process does not have is refused as the flags are parsed, not at the first run."""
  p.add_argument(
    "--devices", type=_device_count, metavar="N",
    help="run on the first N local devices (default: all of them)",
  )  # fmt: skip


def _device_count(text: str) -> int:
  n = int(text)
  if not 1 <= n <= jax.local_device_count():
    raise argparse.ArgumentTypeError(f"{n}: this process has {jax.local_device_count()} device(s)")
  return n


def local_devices(n: int | None):
  """The first n local devices (n from --devices), or None (every device) for n None."""
  return None if n is None else jax.local_devices()[:n]
