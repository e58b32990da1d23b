"""Times the generalized interaction layer's implementations and contraction orders.

  python -m benchmarks.einsum_bench [--quick] [--shapes ...] [--record | --json OUT]
      [--plot OUT.png] [--dtype bfloat16] [--impls ...] [--mem-limit-gb 4]

`--quick` (well under a minute on 2 CPU cores): the paper's two Criteo layers at
batch 32, the reference, FuxiCTR and production kernels, the goals. Nothing is
written unless asked: `--record` updates the committed
benchmarks/results/einsum_bench_<backend>[_<dtype>][_quick].json, `--json` writes
another file.

For every shape and implementation: forward and forward+backward (gradients with
respect to all five operands) wall time (warm-up, `block_until_ready`, median),
XLA's FLOPs (`cost_analysis`) and temporary memory (`memory_analysis`), GFLOP/s
and its fraction of a matmul peak measured in the same run, and speedups over the
materialising `reference` and the FuxiCTR layout. Every (impl, mode) of a shape is
timed once per round, round after round (`common.time_rounds`); a speedup is the
median over rounds of the two times of one round (paired), so a burst of load
from other jobs falls on both sides of a ratio. Implementations whose compiled
temporary memory exceeds `--mem-limit-gb` are recorded as "skipped: memory",
except at the paper's Criteo shapes, which the goals need: there they run in
equal batch chunks that fit the limit (reported as such; the memory column keeps
the full-batch figure XLA compiled). Output: markdown tables and a "Goals" section
on stdout; JSON and a PNG plot when asked.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from gin_jax.models.interaction import einsum_f32acc, generalized_interaction

F32 = jnp.float32
GIB = 2**30
KEEP_RATIO = 0.3
SPEEDUP_GOAL = 50.0
MEMORY_GOAL = 1 / 50
MODES = ("fwd", "fwd_bwd")

# ---------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shape:
  name: str  # row label
  group: str  # "named", "custom" or a sweep ("sweep_f", ...)
  b: int  # batch
  f: int  # fields (u ranges over f)
  m: int  # vectors of the previous layer (v ranges over m)
  d: int  # embedding size
  s: int  # subspaces
  chunk_baselines: bool = False  # over-limit baselines run in batch chunks, not skipped
  sweep_value: int | None = None  # the swept dimension's value, for plots

  @property
  def dims(self) -> str:
    return f"b={self.b} f={self.f} m={self.m} d={self.d} S={self.s}"


# Names are what --shapes takes.
PAPER_L1 = Shape("paper_l1", "named", 1024, 39, 39, 16, 3, chunk_baselines=True)
PAPER_L2 = Shape("paper_l2", "named", 1024, 39, 3, 16, 3, chunk_baselines=True)
BARS = Shape("bars", "named", 4096, 39, 39, 10, 8)
FRAPPE = Shape("frappe", "named", 1024, 10, 10, 16, 3)
NAMED = (PAPER_L1, PAPER_L2, BARS, FRAPPE)
# --quick: the paper's layers at this batch (their baselines then fit in memory unchunked),
# with these implementations: the goals' three.
QUICK_BATCH = 32
QUICK_IMPLS = ("reference", "fuxictr", "factorized")
SWEEP_DIMS = {"sweep_f": "f", "sweep_d": "d", "sweep_s": "s", "sweep_batch": "b"}

# Sweeps vary one dimension of the paper's layer 1 (m = f, d=16, S=3, batch 1024).
SWEEP_BASE = {"b": 1024, "f": 39, "d": 16, "s": 3}
SWEEP_POINTS = {
  "sweep_f": (10, 20, 39, 80),
  "sweep_d": (8, 16, 32, 64),
  "sweep_s": (1, 3, 8, 16),
  "sweep_batch": (256, 1024, 4096, 16384),
}
QUICK_SWEEP_POINTS = {"sweep_f": (10, 20, 39)}


def sweep(group: str, points: Sequence[int], base: dict[str, int] | None = None) -> list[Shape]:
  """The shapes of one sweep: `base` (default SWEEP_BASE) with one dimension set to each point."""
  shapes = []
  for value in points:
    dims = dict(SWEEP_BASE if base is None else base)
    dims[SWEEP_DIMS[group]] = value
    name = f"{group.removeprefix('sweep_')}={value}"
    shapes.append(Shape(name, group, m=dims["f"], sweep_value=value, **dims))
  return shapes


def parse_shapes(tokens: Sequence[str], quick: bool) -> list[Shape]:
  """Expands --shapes tokens: every name the tables print (paper_l1, bars, f=20,
  custom_8_3_3_4_2), the groups paper, named, sweeps, sweep_f ..., all, or b,f,m,d,S.

  With `quick`, the paper's layers are at QUICK_BATCH and the sweeps have fewer points.
  """
  points = QUICK_SWEEP_POINTS if quick else SWEEP_POINTS
  paper = [PAPER_L1, PAPER_L2]
  if quick:
    paper = [dataclasses.replace(shape, b=QUICK_BATCH) for shape in paper]
  presets = {"paper": paper, "named": [*paper, BARS, FRAPPE]}
  presets |= {shape.name: [shape] for shape in presets["named"]}
  presets["sweeps"] = [shape for g, p in points.items() for shape in sweep(g, p)]
  presets["all"] = presets["named"] + presets["sweeps"]
  for group in SWEEP_POINTS:
    presets[group] = sweep(group, points.get(group, SWEEP_POINTS[group]))
  shapes = []
  for token in tokens:
    point = re.fullmatch(r"(f|d|s|batch)=([0-9]+)", token)
    custom = re.fullmatch(
      r"(?:custom_)?([0-9]+)[,_]([0-9]+)[,_]([0-9]+)[,_]([0-9]+)[,_]([0-9]+)", token
    )
    if token in presets:
      shapes += presets[token]
    elif point:
      shapes += sweep(f"sweep_{point[1]}", [int(point[2])])
    elif custom:
      b, f, m, d, s = (int(v) for v in custom.groups())
      shapes.append(Shape(f"custom_{b}_{f}_{m}_{d}_{s}", "custom", b, f, m, d, s))
    else:
      raise SystemExit(
        f"--shapes: unknown {token!r}; use {sorted(presets)}, f=N, d=N, s=N, batch=N or b,f,m,d,S"
      )
  # Named shapes first: a sweep point that repeats one reuses its records.
  return sorted(dict.fromkeys(shapes), key=lambda shape: shape.group.startswith("sweep"))


# ---------------------------------------------------------------------------
# Implementations. Production ones come from gin_jax.models.interaction; the others
# are contraction orders and layouts measured here against it.
# ---------------------------------------------------------------------------


def _wh(w_sde, h_se, dtype):
  return (w_sde.astype(F32) * h_se.astype(F32)[:, None, :]).astype(dtype)


def order_ty(b0_bfd, x_bmd, alpha_sfm, w_sde, h_se):
  """T = alpha.E over u, Y = (W h).X over e, then sum over v of T * Y (the old default)."""
  dtype = b0_bfd.dtype
  y_bsmd = einsum_f32acc("sde,bme->bsmd", _wh(w_sde, h_se, dtype), x_bmd)
  t_bsmd = einsum_f32acc("sfm,bfd->bsmd", alpha_sfm.astype(dtype), b0_bfd)
  return jnp.sum(t_bsmd * y_bsmd, axis=2)


def order_ay(b0_bfd, x_bmd, alpha_sfm, w_sde, h_se):
  """Y = (W h).X first, alpha contracts the Y side over v, E last over u."""
  dtype = b0_bfd.dtype
  y_bsmd = einsum_f32acc("sde,bme->bsmd", _wh(w_sde, h_se, dtype), x_bmd)
  u_bsfd = einsum_f32acc("sfm,bsmd->bsfd", alpha_sfm.astype(dtype), y_bsmd)
  return einsum_f32acc("bfd,bsfd->bsd", b0_bfd, u_bsfd)


def _single_einsum(b0_bfd, x_bmd, alpha_sfm, w_sde, h_se, optimize):
  return jnp.einsum(
    "sfm,bfd,bme,sde,se->bsd",
    alpha_sfm,
    b0_bfd,
    x_bmd,
    w_sde,
    h_se,
    optimize=optimize,
    preferred_element_type=F32,
  )


@dataclasses.dataclass(frozen=True)
class KeptPairs:
  """The kept (u, v) pairs of a mask, per subspace, padded to the largest count."""

  u_sk: np.ndarray  # [S, K] int32 index into f
  v_sk: np.ndarray  # [S, K] int32 index into m
  valid_sk: np.ndarray  # [S, K] bool; False marks padding


def kept_pair_indices(mask_sfm: np.ndarray) -> KeptPairs:
  """The (u, v) indices of the True entries of a [S, f, m] mask, per subspace."""
  s = mask_sfm.shape[0]
  k = max(1, int(mask_sfm.reshape(s, -1).sum(axis=1).max()))
  u_sk = np.zeros((s, k), np.int32)
  v_sk = np.zeros((s, k), np.int32)
  valid_sk = np.zeros((s, k), bool)
  for i in range(s):
    u, v = np.nonzero(mask_sfm[i])
    u_sk[i, : len(u)], v_sk[i, : len(v)], valid_sk[i, : len(u)] = u, v, True
  return KeptPairs(u_sk, v_sk, valid_sk)


def sparse_kept(b0_bfd, x_bmd, alpha_sfm, w_sde, h_se, pairs: KeptPairs):
  """Touches only the kept pairs: gathers E[u] and ((W h).X)[v] per kept (u, v)."""
  dtype = b0_bfd.dtype
  s_idx = np.arange(pairs.u_sk.shape[0])[:, None]
  alpha_sk = jnp.where(pairs.valid_sk, alpha_sfm[s_idx, pairs.u_sk, pairs.v_sk], 0)
  y_bsmd = einsum_f32acc("sde,bme->bsmd", _wh(w_sde, h_se, dtype), x_bmd)
  e_bskd = b0_bfd[:, pairs.u_sk, :].astype(F32)
  y_bskd = jnp.take_along_axis(y_bsmd, pairs.v_sk[None, :, :, None], axis=2)
  return jnp.sum(alpha_sk.astype(F32)[None, :, :, None] * e_bskd * y_bskd, axis=2)


@dataclasses.dataclass(frozen=True)
class Impl:
  fn: Callable[..., jax.Array]  # (b0, x, alpha, w, h, mask_sfm, pairs) -> P_bsd
  doc: str
  masked: bool = False  # runs with a keep-ratio mask (named and custom shapes only)
  baseline: bool = False  # materialising; may be chunked or skipped for memory


def _production(impl):
  return lambda b0, x, alpha, w, h, mask, pairs: generalized_interaction(
    b0, x, alpha, w, h, impl=impl
  )


def _variant(fn):
  return lambda b0, x, alpha, w, h, mask, pairs: fn(b0, x, alpha, w, h)


IMPLS: dict[str, Impl] = {
  "reference": Impl(
    _production("reference"), "materialise Z per pair (paper formula)", False, True
  ),
  "fuxictr": Impl(
    _production("fuxictr"), "FuxiCTR: b x pairs x d x d outer, alpha matmul", False, True
  ),
  "factorized": Impl(
    _production("factorized"), "production: alpha.E over u, then X over v, then (W h) over e"
  ),
  "einsum_optimal": Impl(
    _variant(functools.partial(_single_einsum, optimize="optimal")),
    "one jnp.einsum, optimize='optimal'",
  ),
  "einsum_greedy": Impl(
    _variant(functools.partial(_single_einsum, optimize="greedy")),
    "one jnp.einsum, optimize='greedy'",
  ),
  "order_ty": Impl(_variant(order_ty), order_ty.__doc__),
  "order_ay": Impl(_variant(order_ay), order_ay.__doc__),
  "factorized_masked": Impl(
    lambda b0, x, alpha, w, h, mask, pairs: generalized_interaction(b0, x, alpha, w, h, mask),
    f"production kernel, dense, mask keep={KEEP_RATIO}",
    masked=True,
  ),
  "sparse_masked": Impl(
    lambda b0, x, alpha, w, h, mask, pairs: sparse_kept(b0, x, alpha, w, h, pairs),
    f"gather only the kept pairs, keep={KEEP_RATIO}",
    masked=True,
  ),
}


# The sweeps time the baselines, production and the previous default order only.
SWEEP_IMPLS = ("reference", "fuxictr", "factorized", "order_ty")


def materialised_bytes(shape: Shape, impl: str, mode: str) -> int:
  """Analytic temporary memory, used only where memory_analysis() reports nothing."""
  z_bytes = 4 * shape.b * shape.f * shape.m * shape.d * shape.d
  if impl == "reference":
    return z_bytes * shape.s * (1 if mode == "fwd" else 7)
  if impl == "fuxictr":
    return z_bytes * (1 if mode == "fwd" else 3)
  return 4 * shape.b * shape.s * max(shape.f, shape.m) * shape.d * 4


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
  dtype: Any  # operand dtype of all five inputs
  mem_limit_bytes: int  # skip (or chunk) above this compiled temporary memory
  target_s: float  # timing budget per measurement
  min_iters: int  # fewest timed calls per measurement
  max_iters: int  # most timed calls per measurement
  matmul_peak_gflops: float  # the ceiling for "% peak"
  rounds: int = 5  # timing rounds; every (impl, mode) is timed at least once in each


def make_inputs(shape: Shape, dtype: Any, seed: int = 0):
  """Random layer inputs, a keep-ratio mask (top |alpha| per subspace) and a cotangent."""
  # numpy draws: jax.random would compile a sampler per shape.
  rng = np.random.default_rng(seed)
  b0_bfd = rng.standard_normal((shape.b, shape.f, shape.d), np.float32)
  x_bmd = rng.standard_normal((shape.b, shape.m, shape.d), np.float32)
  alpha_sfm = rng.standard_normal((shape.s, shape.f, shape.m), np.float32)
  w_sde = rng.standard_normal((shape.s, shape.d, shape.d), np.float32) / math.sqrt(shape.d)
  h_se = rng.standard_normal((shape.s, shape.d), np.float32)
  cotangent_bsd = jnp.asarray(rng.standard_normal((shape.b, shape.s, shape.d), np.float32))
  operands = tuple(jnp.asarray(a.astype(dtype)) for a in (b0_bfd, x_bmd, alpha_sfm, w_sde, h_se))
  abs_alpha = np.abs(alpha_sfm).reshape(shape.s, -1)
  keep = math.ceil(KEEP_RATIO * shape.f * shape.m)
  top = np.argsort(-abs_alpha, axis=1, kind="stable")[:, :keep]
  mask_sfm = np.zeros_like(abs_alpha, dtype=bool)
  np.put_along_axis(mask_sfm, top, True, axis=1)
  return operands, mask_sfm.reshape(shape.s, shape.f, shape.m), cotangent_bsd


def build_fns(impl: Impl, mask_sfm: np.ndarray | None, pairs: KeptPairs | None):
  """(forward, forward+backward) jitted over (b0, x, alpha, w, h[, cotangent])."""
  mask = None if mask_sfm is None else jnp.asarray(mask_sfm)

  def forward(*operands):
    return impl.fn(*operands, mask, pairs)

  def loss(*operands_and_cotangent):
    *operands, cotangent_bsd = operands_and_cotangent
    return jnp.sum(forward(*operands).astype(F32) * cotangent_bsd)

  return jax.jit(forward), jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))


def _batch_slices(args: Sequence[jax.Array], batch: int, chunks: int) -> list[tuple]:
  # Operands with a leading batch axis: b0, x and the cotangent.
  size = batch // chunks
  return [
    tuple(
      jnp.asarray(np.asarray(a)[i * size : (i + 1) * size]) if a.shape[:1] == (batch,) else a
      for a in args
    )
    for i in range(chunks)
  ]


def _chunk_count(shape: Shape, temp_bytes: int, limit: int) -> int:
  chunks = 1
  while temp_bytes / chunks > limit and shape.b % (chunks * 2) == 0 and chunks < shape.b:
    chunks *= 2
  return chunks


@dataclasses.dataclass
class Case:
  """A compiled, warmed-up (shape, impl, mode) ready to time; `call` None if skipped."""

  record: dict
  call: Callable[[], Any] | None = None
  iters: int = 0
  output: np.ndarray | None = None  # forward output (first chunk only when chunked)


def build_case(shape, name, impl, mode, jitted, args, settings) -> Case:
  """Compiles at full batch, applies the memory rule, warms up and sizes the timing."""
  compiled, stats = common.compile_with_stats(jitted, *args)
  temp = stats["temp_bytes"]
  limit_temp = temp if temp is not None else materialised_bytes(shape, name, mode)
  record = {"shape": shape.name, "group": shape.group, "impl": name, "mode": mode}
  record |= {"b": shape.b, "f": shape.f, "m": shape.m, "d": shape.d, "S": shape.s}
  record |= {"sweep_value": shape.sweep_value, "keep_ratio": KEEP_RATIO if impl.masked else None}
  record |= stats | {"chunks": 1, "status": "ok", "time_s": None, "iters": 0}
  if limit_temp <= settings.mem_limit_bytes:
    output, iters = common.warm_up(
      compiled,
      *args,
      target_s=settings.target_s,
      min_iters=settings.min_iters,
      max_iters=settings.max_iters,
    )
    call = functools.partial(compiled, *args)
    iters = max(iters, settings.rounds)
    return Case(record, call, iters, np.asarray(output) if mode == "fwd" else None)
  if not (impl.baseline and shape.chunk_baselines):
    record["status"] = "skipped: memory"
    return Case(record)
  chunks = _chunk_count(shape, limit_temp, settings.mem_limit_bytes)
  while True:  # compiling at the chunk size confirms it fits; full-batch figures stay
    chunk_args = _batch_slices(args, shape.b, chunks)
    compiled, chunk_stats = common.compile_with_stats(jitted, *chunk_args[0])
    if (chunk_stats["temp_bytes"] or 0) <= settings.mem_limit_bytes or shape.b % (2 * chunks):
      break
    chunks *= 2
  record |= {"chunks": chunks, "chunk_temp_bytes": chunk_stats["temp_bytes"]}
  output = common.block(compiled(*chunk_args[0]))  # warm-up on one chunk

  def run_chunks():
    return [common.block(compiled(*a)) for a in chunk_args]

  # Slow by construction: the fewest full passes, one a round.
  return Case(record, run_chunks, settings.rounds, np.asarray(output) if mode == "fwd" else None)


def _rel_err(out: np.ndarray, expected: np.ndarray) -> float:
  expected = np.asarray(expected, np.float64)
  scale = float(np.max(np.abs(expected))) or 1.0
  return float(np.max(np.abs(np.asarray(out, np.float64) - expected))) / scale


def bench_shape(shape: Shape, impl_names: Sequence[str], settings: Settings) -> list[dict]:
  """All records of one shape: compile and warm up every (impl, mode), then time them
  round-robin (`common.time_interleaved`), then errors against production and speedups."""
  print(f"{shape.name} ({shape.dims}): compiling and timing", file=sys.stderr, flush=True)
  operands, mask_sfm, cotangent_bsd = make_inputs(shape, settings.dtype)
  pairs = kept_pair_indices(mask_sfm)
  cases = {}
  for name in impl_names:
    impl = IMPLS[name]
    forward, forward_backward = build_fns(impl, mask_sfm if impl.masked else None, pairs)
    for mode, jitted, args in (
      ("fwd", forward, operands),
      ("fwd_bwd", forward_backward, (*operands, cotangent_bsd)),
    ):
      cases[name, mode] = build_case(shape, name, impl, mode, jitted, args, settings)
  timed = {key: case for key, case in cases.items() if case.call is not None}
  by_round = common.time_rounds(
    {key: case.call for key, case in timed.items()},
    {key: case.iters for key, case in timed.items()},
    settings.rounds,
  )
  for key, case in timed.items():
    samples = [t for times in by_round[key] for t in times]
    seconds = float(np.median(samples))
    case.record |= {"time_s": seconds, "min_time_s": min(samples), "iters": len(samples)}
    case.record["round_s"] = [float(np.median(times)) for times in by_round[key]]
    if case.record["flops"]:
      case.record["gflops_per_s"] = case.record["flops"] / seconds / 1e9
      case.record["peak_fraction"] = case.record["gflops_per_s"] / settings.matmul_peak_gflops
  records = [case.record for case in cases.values()]
  _annotate(shape, records, {key: case.output for key, case in cases.items()})
  for record in records:
    print(_progress(record), file=sys.stderr, flush=True)
  return records


def _annotate(shape: Shape, records: list[dict], outputs: dict) -> None:
  z_bytes = 4 * shape.b * shape.s * shape.f * shape.m * shape.d * shape.d
  by_key = {(r["impl"], r["mode"]): r for r in records}
  for r in records:
    expected_impl = "factorized_masked" if r["keep_ratio"] else "factorized"
    expected = outputs.get((expected_impl, "fwd"))
    output = outputs.get((r["impl"], "fwd"))
    if r["mode"] == "fwd" and output is not None and expected is not None:
      r["max_rel_err_vs_factorized"] = _rel_err(output, expected[: len(output)])
    for base in ("reference", "fuxictr"):
      other = by_key.get((base, r["mode"]))
      if r["time_s"] and other and other["time_s"]:  # paired: round by round
        r[f"speedup_vs_{base}"] = common.paired_ratio(_rounds(other), _rounds(r))
      if r["temp_bytes"] is not None and other and other["temp_bytes"]:
        r[f"temp_fraction_vs_{base}"] = r["temp_bytes"] / other["temp_bytes"]
    if r["impl"] == "reference" and r["temp_bytes"] is not None:
      if r["temp_bytes"] < z_bytes / 100:
        r["note"] = f"Z ({z_bytes / GIB:.2g} GiB) fused away by XLA, not materialised"
      else:
        r["note"] = f"Z ({z_bytes / GIB:.2g} GiB) materialised"


def _rounds(r: dict) -> list[list[float]]:
  """A record's per-round times, as common.paired_ratio takes them."""
  return [[t] for t in r.get("round_s") or [r["time_s"]]]


def _progress(r: dict) -> str:
  time_ms = f"{r['time_s'] * 1e3:.3g} ms" if r["time_s"] else r["status"]
  return f"  {r['shape']:18s} {r['impl']:18s} {r['mode']:8s} {time_ms}"


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def _ms(r: dict | None) -> str:
  if r is None:
    return "-"
  if r["time_s"] is None:
    return "skip (mem)" if r["status"].startswith("skipped: memory") else r["status"]
  return common.fmt(r["time_s"] * 1e3) + (f" ({r['chunks']}ch)" if r["chunks"] > 1 else "")


def _mb(value: float | None) -> str:
  return "-" if value is None else common.fmt(value / 2**20)


def shape_table(records: list[dict]) -> str:
  """One row per (shape, impl) of the named and custom shapes."""
  headers = [
    "shape",
    "impl",
    "fwd ms",
    "f+b ms",
    "f+b GFLOP",
    "f+b GFLOP/s",
    "% peak",
    "fwd temp MiB",
    "f+b temp MiB",
    "f+b x ref",
    "f+b x fuxictr",
    "fwd x ref",
    "err",
  ]
  rows = []
  keys = dict.fromkeys(
    (r["shape"], r["impl"]) for r in records if not r["group"].startswith("sweep")
  )
  index = {(r["shape"], r["impl"], r["mode"]): r for r in records}
  for shape, impl in keys:
    fwd, fb = index.get((shape, impl, "fwd")), index.get((shape, impl, "fwd_bwd"))
    rows.append(
      [
        shape,
        impl,
        _ms(fwd),
        _ms(fb),
        common.fmt(fb["flops"] / 1e9 if fb["flops"] else None),
        common.fmt(fb.get("gflops_per_s")),
        common.fmt(100 * fb["peak_fraction"] if fb.get("peak_fraction") else None),
        _mb(fwd["temp_bytes"]),
        _mb(fb["temp_bytes"]),
        common.fmt(fb.get("speedup_vs_reference")),
        common.fmt(fb.get("speedup_vs_fuxictr")),
        common.fmt(fwd.get("speedup_vs_reference")),
        common.fmt(fwd.get("max_rel_err_vs_factorized"), 2),
      ]
    )
  return common.markdown_table(headers, rows)


def sweep_table(records: list[dict], impl_names: Sequence[str]) -> str:
  """Forward+backward ms of each impl at each sweep point (fwd ms in brackets for baselines)."""
  sweep_records = [r for r in records if r["group"].startswith("sweep")]
  impls = [n for n in impl_names if any(r["impl"] == n for r in sweep_records)]
  index = {(r["shape"], r["group"], r["impl"], r["mode"]): r for r in sweep_records}
  points = dict.fromkeys((r["group"], r["shape"]) for r in sweep_records)
  rows = []
  for group, shape in points:
    row = [group, shape]
    for impl in impls:
      fwd, fb = index.get((shape, group, impl, "fwd")), index.get((shape, group, impl, "fwd_bwd"))
      row.append(f"{_ms(fb)} [{_ms(fwd)}]" if IMPLS[impl].baseline else _ms(fb))
    factorized = index.get((shape, group, "factorized", "fwd_bwd"))
    factorized_fwd = index.get((shape, group, "factorized", "fwd"))
    row.append(common.fmt(factorized and factorized.get("speedup_vs_reference")))
    row.append(common.fmt(factorized_fwd and factorized_fwd.get("speedup_vs_reference")))
    rows.append(row)
  headers = ["sweep", "point"] + [f"{i} f+b ms" for i in impls] + ["fact. x ref f+b", "x ref fwd"]
  return common.markdown_table(headers, rows)


def _paper_layers(records: list[dict], base: str) -> list[tuple[str, dict, dict | None]]:
  """(layer, factorized record, `base` record) of the paper's layers that ran, f+b."""
  index = {(r["shape"], r["impl"]): r for r in records if r["mode"] == "fwd_bwd"}
  return [
    (
      shape.name.removeprefix("paper_"),
      index[shape.name, "factorized"],
      index.get((shape.name, base)),
    )
    for shape in (PAPER_L1, PAPER_L2)
    if (shape.name, "factorized") in index
  ]


def _summed_ratio(layers: list[tuple[str, dict, dict]]) -> float:
  """Paired over both layers: in each round, the layers' summed time of the baseline over
  that of factorized; the median over rounds."""

  def summed(rs):
    return [[sum(times)] for times in zip(*(r.get("round_s") or [r["time_s"]] for r in rs))]

  return common.paired_ratio(summed([o for *_, o in layers]), summed([m for _, m, _ in layers]))


def goals(records: list[dict]) -> list[dict]:
  """The issue's goals at the paper's Criteo shape: layer 1 + layer 2 where both ran.

  Speed compares summed f+b times, round by round (_summed_ratio); memory compares the
  larger temp of the layers.
  """
  results = []
  for base in ("reference", "fuxictr"):
    layers = _paper_layers(records, base)
    timed = bool(layers) and all(o and o["time_s"] and m["time_s"] for _, m, o in layers)
    sized = bool(layers) and all(
      o and o["temp_bytes"] and m["temp_bytes"] is not None for _, m, o in layers
    )
    speedup = _summed_ratio(layers) if timed else None
    fraction = (
      max(m["temp_bytes"] for _, m, _ in layers) / max(o["temp_bytes"] for *_, o in layers)
      if sized
      else None
    )
    results.append(
      {
        "goal": f"factorized f+b >= {SPEEDUP_GOAL:g}x faster than {base} (paper Criteo)",
        "measured": speedup,
        "detail": ", ".join(f"{n} {m[f'speedup_vs_{base}']:.3g}x" for n, m, o in layers)
        if timed
        else "",
        "pass": None if speedup is None else speedup >= SPEEDUP_GOAL,
      }
    )
    results.append(
      {
        "goal": f"factorized f+b peak temp <= 1/{1 / MEMORY_GOAL:g} of {base}'s (paper Criteo)",
        "measured": fraction,
        "detail": ", ".join(
          f"{n} {_mb(m['temp_bytes'])} vs {_mb(o['temp_bytes'])} MiB" for n, m, o in layers
        )
        if sized
        else "",
        "pass": None if fraction is None else fraction <= MEMORY_GOAL,
      }
    )
  return results


def format_goals(goal_results: list[dict], batch: int | None = None) -> str:
  at = f", the paper's layers at batch {batch}" if batch else ""
  lines = [f"## Goals (the 2-core CPU targets; this run: {jax.default_backend()}{at})"]
  for g in goal_results:
    value = g["measured"]
    if value is None:
      figure, verdict = "not measured (paper shapes not run)", "n/a"
    else:
      if "temp" not in g["goal"]:
        figure = f"{value:.3g}x"
      elif 0 < value < 1:
        figure = f"1/{1 / value:.3g}"
      else:
        figure = f"{value:.3g} of theirs"
      figure += f" ({g['detail']})"
      verdict = "PASS" if g["pass"] else "FAIL"
    lines.append(f"- {g['goal']}: {figure} -> {verdict}")
  return "\n".join(lines)


def format_notes(records: list[dict]) -> str:
  """What memory_analysis says about the reference's Z, per named shape and mode."""
  lines = ["## Notes"]
  for r in records:
    if r["impl"] == "reference" and "note" in r and not r["group"].startswith("sweep"):
      temp = _mb(r["temp_bytes"])
      lines.append(f"- {r['shape']} reference {r['mode']}: temp {temp} MiB; {r['note']}")
  return "\n".join(lines) if len(lines) > 1 else ""


def order_check(records: list[dict], impl_names: Sequence[str]) -> list[dict]:
  """Forward+backward time of every unmasked factorized variant relative to production."""
  checks = []
  index = {(r["shape"], r["impl"], r["mode"]): r for r in records}
  variants = [n for n in impl_names if not IMPLS[n].baseline and not IMPLS[n].masked]
  for shape in (PAPER_L1, PAPER_L2, BARS, FRAPPE):
    production = index.get((shape.name, "factorized", "fwd_bwd"))
    if not production or not production["time_s"]:
      continue
    ratios = {}
    for name in variants:
      r = index.get((shape.name, name, "fwd_bwd"))
      if r and r["time_s"]:
        ratios[name] = production["time_s"] / r["time_s"]
    fastest = max(ratios, key=ratios.get)
    checks.append({"shape": shape.name, "speedup_over_production": ratios, "fastest": fastest})
  return checks


def format_order_check(checks: list[dict]) -> str:
  lines = ["## Contraction order (f+b time of production / variant; > 1 means faster)"]
  for c in checks:
    ratios = ", ".join(f"{k} {v:.2f}" for k, v in c["speedup_over_production"].items())
    lines.append(f"- {c['shape']}: fastest {c['fastest']}; {ratios}")
  return "\n".join(lines)


def plot(records: list[dict], impl_names: Sequence[str], path: str, title: str) -> None:
  """Time vs each swept dimension (log-log; solid f+b, dotted fwd), plus the named shapes."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  color = {name: f"C{i}" for i, name in enumerate(IMPLS)}
  timed = [r for r in records if r["time_s"]]
  groups = [g for g in SWEEP_POINTS if any(r["group"] == g for r in timed)]
  has_named = any(not r["group"].startswith("sweep") for r in timed)
  panels = len(groups) + has_named
  cols = 2 if panels > 1 else 1
  fig, axes = plt.subplots(
    math.ceil(panels / cols),
    cols,
    figsize=(6.5 * cols, 4.2 * math.ceil(panels / cols)),
    squeeze=False,
  )
  for ax, group in zip(axes.flat, groups):
    for name in impl_names:
      for mode, style in (("fwd_bwd", "-"), ("fwd", ":")):
        points = sorted(
          (r["sweep_value"], r["time_s"] * 1e3)
          for r in timed
          if r["group"] == group and r["impl"] == name and r["mode"] == mode
        )
        if points:
          label = name if mode == "fwd_bwd" else None
          ax.plot(*zip(*points), style, marker="o", ms=3, color=color[name], label=label)
    ax.set(xscale="log", yscale="log", xlabel=group.removeprefix("sweep_"), ylabel="ms")
    ax.set_title(f"{group}, rest at paper layer 1 (solid f+b, dotted fwd)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
  if has_named:
    ax = axes.flat[len(groups)]
    fb = [r for r in timed if r["mode"] == "fwd_bwd" and not r["group"].startswith("sweep")]
    shapes = list(dict.fromkeys(r["shape"] for r in records if not r["group"].startswith("sweep")))
    width = 0.8 / len(impl_names)
    for i, name in enumerate(impl_names):
      times = {r["shape"]: r["time_s"] * 1e3 for r in fb if r["impl"] == name}
      xs = [j + i * width for j, shape in enumerate(shapes) if shape in times]
      heights = [times[shape] for shape in shapes if shape in times]
      ax.bar(xs, heights, width, label=name, color=color[name])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, fontsize=7)
    ax.set(yscale="log", ylabel="f+b ms")
    ax.set_title("named shapes, f+b (no bar = skipped: memory)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
  for ax in list(axes.flat)[panels:]:
    ax.axis("off")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  common.add_output_flags(parser, "einsum_bench_<backend>[_<dtype>][_quick].json")
  parser.add_argument("--plot", metavar="OUT.png", help="plot the times into this PNG")
  parser.add_argument(
    "--shapes", nargs="+", default=None,
    help="names as the tables print them (paper_l1, bars, f=20, ...), groups (paper, named, "
    "sweeps, sweep_f, all) or b,f,m,d,S (default: named sweeps; --quick: paper)",
  )  # fmt: skip
  parser.add_argument("--impls", nargs="+", default=None, choices=list(IMPLS), help="default all")
  parser.add_argument(
    "--sweep-impls", nargs="+", default=list(SWEEP_IMPLS), choices=list(IMPLS), help="in sweeps"
  )
  parser.add_argument(
    "--quick",
    action="store_true",
    help=f"the paper's layers at batch {QUICK_BATCH} by {', '.join(QUICK_IMPLS)} (under a "
    "minute on 2 CPU cores)",
  )
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--mem-limit-gb", type=float, default=4.0, help="GiB of XLA temp memory")
  parser.add_argument("--peak-n", type=int, help="matmul size for the peak (default by backend)")
  parser.add_argument("--no-plot", action="store_true", help=argparse.SUPPRESS)  # the default
  args = parser.parse_args(argv)
  if args.impls is None:
    args.impls = list(QUICK_IMPLS if args.quick else IMPLS)
  return args


def main(argv: Sequence[str] | None = None, *, shapes: Sequence[Shape] | None = None) -> dict:
  """Runs the benchmark.

  Args:
    argv: command-line arguments (default `sys.argv[1:]`).
    shapes: the shapes to run, in place of `--shapes`: for shapes the command line
      cannot name, such as tiny stand-ins for the paper's layers in tests (the goals
      and the order check find the paper's layers by name).

  Returns:
    The JSON payload it wrote.
  """
  args = parse_args(argv)
  started = time.perf_counter()
  info = common.backend_info()
  backend = info["backend"]
  suffix = ("" if args.dtype == "float32" else f"_{args.dtype}") + ("_quick" if args.quick else "")
  committed = f"einsum_bench_{backend}{suffix}.json"
  dtype = jnp.dtype(args.dtype)
  if shapes is None:
    shapes = parse_shapes(
      args.shapes or (["paper"] if args.quick else ["named", "sweeps"]), args.quick
    )

  # --- ceiling -------------------------------------------------------------
  quick_n = 1024 if args.quick and backend == "cpu" else None
  peak = common.measure_matmul_peak(dtype, n=args.peak_n or quick_n)
  print(f"# einsum_bench on {backend} ({info['device_kind']}), dtype {args.dtype}", flush=True)
  print(f"matmul peak ({args.dtype}): {peak:.1f} GFLOP/s", flush=True)
  settings = Settings(
    dtype=dtype,
    mem_limit_bytes=int(args.mem_limit_gb * GIB),
    target_s=0.3 if args.quick else 0.5,
    min_iters=2 if args.quick else 3,
    max_iters=5 if args.quick else 20,
    matmul_peak_gflops=peak,
  )

  # --- measurements --------------------------------------------------------
  # Sweeps run --sweep-impls only, unmasked; a sweep point equal to an earlier
  # shape reuses its records.
  sweep_impls = [n for n in args.impls if n in args.sweep_impls and not IMPLS[n].masked]
  records, cache = [], {}
  for shape in shapes:
    impls = sweep_impls if shape.group.startswith("sweep") else args.impls
    key = (shape.b, shape.f, shape.m, shape.d, shape.s)
    if key not in cache:
      cache[key] = bench_shape(shape, impls, settings)
    records += [
      r | {"shape": shape.name, "group": shape.group, "sweep_value": shape.sweep_value}
      for r in cache[key]
      if r["impl"] in impls
    ]

  # --- report --------------------------------------------------------------
  goal_results = goals(records)
  checks = order_check(records, args.impls)
  payload = {
    "benchmark": "einsum_bench",
    "command": "python -m benchmarks.einsum_bench " + " ".join(argv or sys.argv[1:]),
    **info,
    "dtype": args.dtype,
    "matmul_peak_gflops": peak,
    "mem_limit_bytes": settings.mem_limit_bytes,
    "quick": args.quick,
    "impls": {name: IMPLS[name].doc for name in args.impls},
    "records": records,
    "contraction_order_check": checks,
    "goals": goal_results,
  }
  print()
  print(
    "Shapes: " + "; ".join(f"{s.name} {s.dims}" for s in shapes if s.group in ("named", "custom"))
  )
  if any(shape.group.startswith("sweep") for shape in shapes):
    print(f"Sweeps vary one of {SWEEP_BASE} (m = f).")
  print("Times are medians; speedups (x) are medians of paired ratios, round by round; (Nch) =")
  print("run in N batch chunks to fit --mem-limit-gb; temp MiB = full-batch XLA temp; err = max")
  print("rel. diff.\n")
  if any(not r["group"].startswith("sweep") for r in records):
    print(shape_table(records), end="\n\n")
  if any(r["group"].startswith("sweep") for r in records):
    print(sweep_table(records, args.impls), end="\n\n")
  if checks:
    print(format_order_check(checks), end="\n\n")
  notes = format_notes(records)
  if notes:
    print(notes, end="\n\n")
  paper_batch = next((shape.b for shape in shapes if shape.name == PAPER_L1.name), None)
  print(format_goals(goal_results, paper_batch if paper_batch != PAPER_L1.b else None))
  payload["wall_s"] = time.perf_counter() - started
  print()
  common.write_result(payload, args, committed)
  if args.plot:
    title = f"einsum_bench: {backend} {info['device_kind']}, {args.dtype}, f+b time"
    plot(records, args.impls, args.plot, title)
    print(f"wrote {args.plot}")
  print(f"total {payload['wall_s']:.0f} s")
  return payload


if __name__ == "__main__":
  main()
