"""The generalized interaction kernel of GIN (paper eq. 11-12, DESIGN.md section 1).

For one layer with inputs B_0 = `b0_bfd` (the field embeddings) and
B_{l-1} = `x_bmd`, the output of subspace s is

  P[b,s,d] = sum_{u,v,e} (alpha*mask)[s,u,v] * E[b,u,d] * X[b,v,e] * W[s,d,e] * h[s,e]

that is Z_uv = (u outer v) * W^s fused as P^s = sum_uv alpha_uv Z_uv h^s, with h
contracting the B_{l-1} index (DCN-M's `x0 * (W x_l)`, the paper's Lemma 3.2).

Four implementations compute the same function:

- `factorized` (production): contracts alpha over u first (T[b,d,s,v]), then X
  over v, then W h over e. Per sample O(S (f m d + m d^2)) FLOPs and
  O(S (m + d) d) memory; no per-pair d x d map ever exists, whatever the
  shapes. This is the path opt_einsum's `optimize="optimal"` picks at the paper
  and BARS shapes, written out so that it cannot switch to materialising the
  pair outer product at other shapes (it would for f = m = 1). For its timings
  against the other contraction orders, see benchmarks/README.md.
- `factorized_ty`: T[b,s,v,d] as above, Y[b,s,v,d] = sum_e W[s,d,e] h[s,e]
  X[b,v,e], then P = sum_v T * Y (DESIGN.md's order). O(S (f m d + m d^2))
  FLOPs like `factorized`, but O(S m d) memory per sample instead of
  O(S d^2): the order for few, wide vectors, e.g. DCN / DCN-M's single
  concatenated embedding (f = m = 1, d = fields x embedding size) or one pair
  at a time (gin_jax.models.baselines).
- `reference`: materialises every Z_uv literally, as the paper's formula reads.
  For tests and benchmarks only: O(S f m d^2) FLOPs and memory.
- `fuxictr`: FuxiCTR's PyTorch layout (materialise the batch x pairs x d x d
  outer product, contract alpha with a matmul, then W and h). Benchmarks only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("factorized", "factorized_ty", "reference", "fuxictr")


def effective_alpha(alpha_sfm: jax.Array, mask_sfm: jax.Array | None) -> jax.Array:
  """alpha with pruned pairs set to exactly zero (the paper's G(alpha) * alpha).

  Args:
    alpha_sfm: [S, f, m] pair importances.
    mask_sfm: optional boolean [S, f, m]; False marks a pruned pair.

  Returns:
    [S, f, m] alpha where masked entries are 0 (and receive zero gradient).
  """
  if mask_sfm is None:
    return alpha_sfm
  return jnp.where(mask_sfm, alpha_sfm, jnp.zeros((), alpha_sfm.dtype))


def generalized_interaction(
  b0_bfd: jax.Array,
  x_bmd: jax.Array,
  alpha_sfm: jax.Array,
  w_sde: jax.Array,
  h_se: jax.Array,
  mask_sfm: jax.Array | None = None,
  impl: str = "factorized",
) -> jax.Array:
  """One generalized interaction + fusion layer over S subspaces.

  Args:
    b0_bfd: [b, f, d] B_0, the projected field embeddings (u ranges over f).
    x_bmd: [b, m, d] B_{l-1}, the previous layer's vectors (v ranges over m;
      m = f at layer 1, m = S after).
    alpha_sfm: [S, f, m] importance of each ordered pair (u, v) per subspace.
    w_sde: [S, d, e] the interaction weight W^s (d indexes u, e indexes v). Two
      structured forms of the paper's Table 1-2 constraints cost O(d), not
      O(d^2), per vector: [S, 1, e], a W whose rows are all equal (W[s,d,e] =
      w[s,e], DCN), and [S, d], a diagonal W (W^s = diag(w[s]): FM, PNN, FwFM,
      AFM, xDeepFM).
    h_se: [S, e] the fusion projection h^s, contracting the B_{l-1} index.
    mask_sfm: optional boolean [S, f, m]; masked pairs contribute exactly 0.
    impl: "factorized" (default), "factorized_ty" (few, wide vectors), "reference" or
      "fuxictr".

  Returns:
    P: [b, S, d] in float32 when inputs are float32 or bfloat16 (bfloat16
    inputs are multiplied in bfloat16 and accumulated in float32).
  """
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"unknown impl {impl!r}; choose from {IMPLEMENTATIONS}")
  _check_shapes(b0_bfd, x_bmd, alpha_sfm, w_sde, h_se, mask_sfm)
  alpha_sfm = effective_alpha(alpha_sfm, mask_sfm)
  if w_sde.ndim == 2:  # diagonal W
    if impl.startswith("factorized"):
      return _diagonal(b0_bfd, x_bmd, alpha_sfm, w_sde, h_se)
    w_sde = jax.vmap(jnp.diag)(w_sde)
  fn = {
    "factorized": _factorized,
    "factorized_ty": _factorized_ty,
    "reference": _reference,
    "fuxictr": _fuxictr,
  }[impl]
  return fn(b0_bfd, x_bmd, alpha_sfm, w_sde, h_se)


def einsum_f32acc(spec: str, *operands: jax.Array) -> jax.Array:
  """`jnp.einsum` that accumulates and returns float32 whatever the operand dtype.

  bfloat16 operands keep their storage dtype (halving memory traffic) while every
  dot accumulates in float32. Shared with benchmarks/einsum_bench.py's variants.

  Args:
    spec: the einsum subscripts, e.g. "sfm,bfd->bdsm".
    *operands: the arrays it contracts.

  Returns:
    The contraction, in float32.
  """
  return jnp.einsum(spec, *operands, preferred_element_type=jnp.float32)


def _factorized(b0_bfd, x_bmd, alpha_sfm, w_sde, h_se):
  dtype = b0_bfd.dtype
  # T[b,d,s,v] = sum_u alpha[s,u,v] E[b,u,d]: alpha fused over u before any product.
  t_bdsm = einsum_f32acc("sfm,bfd->bdsm", alpha_sfm.astype(dtype), b0_bfd)
  # R[b,d,s,e] = sum_v T[b,d,s,v] X[b,v,e]: one d x d map per (sample, subspace),
  # never one per pair.
  r_bdse = einsum_f32acc("bdsm,bme->bdse", t_bdsm.astype(dtype), x_bmd.astype(dtype))
  # P[b,s,d] = sum_e R[b,d,s,e] W[s,d,e] h[s,e] (tied rows broadcast to [S, d, e]).
  wh_sde = w_sde.astype(jnp.float32) * h_se.astype(jnp.float32)[:, None, :]
  wh_sde = jnp.broadcast_to(wh_sde, (*w_sde.shape[:1], b0_bfd.shape[2], h_se.shape[1]))
  return einsum_f32acc("bdse,sde->bsd", r_bdse, wh_sde)


def _factorized_ty(b0_bfd, x_bmd, alpha_sfm, w_sde, h_se):
  dtype = b0_bfd.dtype
  # T[b,s,v,d] = sum_u alpha[s,u,v] E[b,u,d], as in `_factorized`.
  t_bsmd = einsum_f32acc("sfm,bfd->bsmd", alpha_sfm.astype(dtype), b0_bfd)
  # Y[b,s,v,d] = sum_e W[s,d,e] h[s,e] X[b,v,e]: a vector per (sample, subspace, v),
  # never a d x d map per sample (one number, broadcast over d, when W's rows are tied).
  wh_sde = (w_sde.astype(jnp.float32) * h_se.astype(jnp.float32)[:, None, :]).astype(dtype)
  y_bsmd = einsum_f32acc("sde,bme->bsmd", wh_sde, x_bmd.astype(dtype))
  return jnp.sum(t_bsmd * y_bsmd, axis=2)


def _diagonal(b0_bfd, x_bmd, alpha_sfm, w_sd, h_sd):
  """W^s = diag(w[s]): P[b,s,d] = (w h)[s,d] sum_{u,v} alpha[s,u,v] E[b,u,d] X[b,v,d].

  No d x d product exists. With many subspaces (S min(f, m) >= f m, e.g.
  xDeepFM's CIN) each pair's Hadamard product is formed once and alpha
  applied as one matrix product; otherwise alpha is first contracted with
  the side that has more vectors ([b, S, min(f, m), d]).
  """
  dtype = b0_bfd.dtype
  alpha = alpha_sfm.astype(dtype)
  x_bmd = x_bmd.astype(dtype)
  s, f, m = alpha_sfm.shape
  if s * min(f, m) >= f * m:
    # Z[(b, d), (v, u)] = X[b,v,d] E[b,u,d], then one [b d, m f] x [m f, S] matrix
    # product (as a 2-D matmul: XLA's CPU einsum of this shape is 1.5x slower).
    b, _, d = b0_bfd.shape
    z_bdmf = jnp.swapaxes(x_bmd, 1, 2)[:, :, :, None] * jnp.swapaxes(b0_bfd, 1, 2)[:, :, None, :]
    alpha_ps = jnp.swapaxes(alpha, 1, 2).reshape(s, m * f).T
    p_bds = jnp.matmul(
      z_bdmf.reshape(b * d, m * f), alpha_ps, preferred_element_type=jnp.float32
    ).reshape(b, d, s)
    p_bsd = jnp.swapaxes(p_bds, 1, 2)
  elif m >= f:
    a_bsfd = einsum_f32acc("sfm,bmd->bsfd", alpha, x_bmd)
    p_bsd = einsum_f32acc("bsfd,bfd->bsd", a_bsfd.astype(dtype), b0_bfd)
  else:
    t_bsmd = einsum_f32acc("sfm,bfd->bsmd", alpha, b0_bfd)
    p_bsd = einsum_f32acc("bsmd,bmd->bsd", t_bsmd.astype(dtype), x_bmd)
  return p_bsd * (w_sd.astype(jnp.float32) * h_sd.astype(jnp.float32))[None]


def _reference(b0_bfd, x_bmd, alpha_sfm, w_sde, h_se):
  f32 = jnp.float32
  # Z[b,s,u,v,d,e] = (u outer v) * W^s, literally.
  z_bsfmde = (
    b0_bfd.astype(f32)[:, None, :, None, :, None]
    * x_bmd.astype(f32)[:, None, None, :, None, :]
    * w_sde.astype(f32)[None, :, None, None, :, :]
  )
  fused_bsde = jnp.sum(alpha_sfm.astype(f32)[None, :, :, :, None, None] * z_bsfmde, axis=(2, 3))
  return jnp.sum(fused_bsde * h_se.astype(f32)[None, :, None, :], axis=-1)


def _fuxictr(b0_bfd, x_bmd, alpha_sfm, w_sde, h_se):
  f32 = jnp.float32
  b, f, d = b0_bfd.shape
  m = x_bmd.shape[1]
  s = alpha_sfm.shape[0]
  # outer[b, pair, d, e] for pair = (u, v), the tensor FuxiCTR builds.
  outer_bpde = jnp.einsum("bfd,bme->bfmde", b0_bfd.astype(f32), x_bmd.astype(f32))
  outer_bpde = outer_bpde.reshape(b, f * m, d, d)
  alpha_ps = alpha_sfm.astype(f32).reshape(s, f * m).T
  fusion_bdes = jnp.matmul(outer_bpde.transpose(0, 2, 3, 1), alpha_ps)
  fusion_bsde = w_sde.astype(f32)[None] * fusion_bdes.transpose(0, 3, 1, 2)
  return jnp.matmul(fusion_bsde, h_se.astype(f32)[None, :, :, None])[..., 0]


def _check_shapes(b0_bfd, x_bmd, alpha_sfm, w_sde, h_se, mask_sfm):
  b, f, d = b0_bfd.shape
  if x_bmd.ndim != 3 or x_bmd.shape[0] != b or x_bmd.shape[2] != d:
    raise ValueError(f"x_bmd must be [b={b}, m, d={d}], got {x_bmd.shape}")
  m = x_bmd.shape[1]
  s = alpha_sfm.shape[0]
  if alpha_sfm.shape != (s, f, m):
    raise ValueError(f"alpha_sfm must be [S, f={f}, m={m}], got {alpha_sfm.shape}")
  if w_sde.shape not in ((s, d, d), (s, 1, d), (s, d)):
    raise ValueError(
      f"w_sde must be [S={s}, d={d}, e={d}] (or [S, 1, e]: rows tied; [S, d]: diagonal), "
      f"got {w_sde.shape}"
    )
  if h_se.shape != (s, d):
    raise ValueError(f"h_se must be [S={s}, e={d}], got {h_se.shape}")
  if mask_sfm is not None and mask_sfm.shape != alpha_sfm.shape:
    raise ValueError(f"mask_sfm must match alpha_sfm {alpha_sfm.shape}, got {mask_sfm.shape}")
