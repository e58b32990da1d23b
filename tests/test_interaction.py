"""The interaction kernel: implementations agree, and GIN reproduces the paper's special cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gin_jax.models.interaction import generalized_interaction as eager_gi

# Compiled as one program, as the models call it (op by op, each einsum and each
# intermediate of every shape compiles on its own); test_vmap_and_jit and the shape
# errors call it eagerly.
gi = jax.jit(eager_gi, static_argnames="impl")


def _inputs(b, f, m, d, s, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32))
  return (
    normal(b, f, d).astype(dtype),
    normal(b, m, d).astype(dtype),
    normal(s, f, m),
    normal(s, d, d),
    normal(s, d),
  )


def _brute_force(e_bfd, x_bmd, alpha_sfm, w_sde, h_se):
  """The paper's formula with explicit loops over samples, subspaces and pairs."""
  e, x, a, w, h = map(np.asarray, (e_bfd, x_bmd, alpha_sfm, w_sde, h_se))
  b, f, d = e.shape
  out = np.zeros((b, a.shape[0], d))
  for i in range(b):
    for s in range(a.shape[0]):
      for u in range(f):
        for v in range(x.shape[1]):
          z_de = np.outer(e[i, u], x[i, v]) * w[s]  # Z_uv = (u outer v) * W^s
          out[i, s] += a[s, u, v] * (z_de @ h[s])  # h contracts the B_{l-1} index
  return out


def _close(a, b, rtol=1e-5):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = max(np.abs(b).max(), 1e-6)
  np.testing.assert_allclose(a / scale, b / scale, atol=rtol, rtol=0)


# (b, f, m, d, S): layer 1 has m = f; deeper layers have m = S.
SHAPES = [(3, 5, 5, 4, 2), (2, 7, 3, 6, 3), (4, 1, 1, 8, 1), (2, 39, 39, 4, 3), (2, 39, 3, 16, 3)]


@pytest.mark.parametrize("impl", ["factorized", "factorized_ty", "reference", "fuxictr"])
def test_matches_brute_force_formula(impl):
  args = _inputs(2, 4, 3, 5, 2)
  _close(gi(*args, impl=impl), _brute_force(*args))


@pytest.mark.parametrize("impl", ["factorized", "factorized_ty", "reference", "fuxictr"])
def test_tied_rows_w_equals_its_broadcast(impl):
  """W given as [S, 1, e] (all rows equal, DCN's constraint) is W broadcast to [S, d, e]."""
  e, x, alpha, w, h = _inputs(2, 4, 3, 5, 2)
  tied = w[:, :1, :]
  _close(gi(e, x, alpha, tied, h, impl=impl), _brute_force(e, x, alpha, jnp.repeat(tied, 5, 1), h))


@pytest.mark.parametrize("impl", ["factorized", "factorized_ty", "reference", "fuxictr"])
@pytest.mark.parametrize("fms", [(4, 3, 2), (3, 5, 2), (3, 4, 6)])
def test_diagonal_w_equals_its_matrix(impl, fms):
  """W given as [S, d] is diag(w[s]) (FM, PNN, FwFM, AFM, xDeepFM); all three contractions."""
  e, x, alpha, w, h = _inputs(2, fms[0], fms[1], 5, fms[2])
  diag = w[:, 0, :]
  full = jax.vmap(jnp.diag)(diag)
  _close(gi(e, x, alpha, diag, h, impl=impl), _brute_force(e, x, alpha, full, h))
  g = jax.grad(lambda a, dg: jnp.sum(gi(e, x, a, dg, h, impl=impl) ** 2), argnums=(0, 1))
  g_full = jax.grad(lambda a, wf: jnp.sum(gi(e, x, a, wf, h, impl="reference") ** 2), (0, 1))
  (ga, gw), (ga_ref, gw_ref) = g(alpha, diag), g_full(alpha, full)
  _close(ga, ga_ref)
  _close(gw, jax.vmap(jnp.diag)(gw_ref))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_factorized_equals_reference(shape, masked):
  b, f, m, d, s = shape
  args = _inputs(b, f, m, d, s, seed=sum(shape))
  mask = jax.random.bernoulli(jax.random.key(7), 0.3, (s, f, m)) if masked else None
  ref = gi(*args, mask_sfm=mask, impl="reference")
  _close(gi(*args, mask_sfm=mask, impl="factorized"), ref)
  _close(gi(*args, mask_sfm=mask, impl="factorized_ty"), ref)
  _close(gi(*args, mask_sfm=mask, impl="fuxictr"), ref)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_gradients_agree(shape):
  b, f, m, d, s = shape
  args = _inputs(b, f, m, d, s, seed=3)
  mask = jax.random.bernoulli(jax.random.key(1), 0.5, (s, f, m))
  probe = jax.random.normal(jax.random.key(2), (b, s, d))

  def loss(impl):
    return lambda *a: jnp.sum(probe * gi(*a, mask_sfm=mask, impl=impl))

  g_ref = jax.grad(loss("reference"), argnums=(0, 1, 2, 3, 4))(*args)
  for impl in ("factorized", "factorized_ty"):
    g_fac = jax.jit(jax.grad(loss(impl), argnums=(0, 1, 2, 3, 4)))(*args)
    for gf, gr in zip(g_fac, g_ref):
      _close(gf, gr)


def test_vmap_and_jit():
  args = _inputs(3, 4, 4, 3, 2)
  stacked = [jnp.stack([a, 2 * a]) for a in args[:2]]
  out = jax.vmap(lambda e, x: eager_gi(e, x, *args[2:]))(*stacked)
  _close(out[1], jax.jit(eager_gi, static_argnames="impl")(stacked[0][1], stacked[1][1], *args[2:]))


def test_bfloat16_inputs_accumulate_in_float32():
  args = _inputs(4, 39, 39, 16, 3)
  e16, x16 = args[0].astype(jnp.bfloat16), args[1].astype(jnp.bfloat16)
  out = gi(e16, x16, *args[2:])
  assert out.dtype == jnp.float32
  # Exact answer for the rounded inputs; bf16 products, f32 sums => ~1e-2 relative.
  ref = gi(e16.astype(jnp.float32), x16.astype(jnp.float32), *args[2:], impl="reference")
  _close(out, ref, rtol=2e-2)


def test_masked_pairs_contribute_nothing_and_get_zero_gradient():
  e, x, alpha, w, h = _inputs(3, 5, 5, 4, 2)
  mask = jax.random.bernoulli(jax.random.key(5), 0.4, alpha.shape)
  # Changing alpha wherever the mask is False must not change the output.
  scrambled = jnp.where(mask, alpha, 1e3 * jax.random.normal(jax.random.key(6), alpha.shape))
  _close(gi(e, x, scrambled, w, h, mask_sfm=mask), gi(e, x, alpha, w, h, mask_sfm=mask))
  _close(gi(e, x, alpha, w, h, mask_sfm=mask), gi(e, x, jnp.where(mask, alpha, 0.0), w, h))
  g = jax.grad(lambda a: jnp.sum(gi(e, x, a, w, h, mask_sfm=mask) ** 2))(alpha)
  assert np.all(np.asarray(g)[~np.asarray(mask)] == 0.0)
  assert np.any(np.asarray(g)[np.asarray(mask)] != 0.0)


def test_all_masked_gives_zero():
  e, x, alpha, w, h = _inputs(2, 3, 3, 4, 2)
  out = gi(e, x, alpha, w, h, mask_sfm=jnp.zeros(alpha.shape, bool))
  assert np.all(np.asarray(out) == 0.0)


def test_shape_errors_name_the_operand():
  e, x, alpha, w, h = _inputs(2, 3, 3, 4, 2)
  with pytest.raises(ValueError, match="alpha_sfm"):
    eager_gi(e, x, alpha[:, :2], w, h)
  with pytest.raises(ValueError, match="w_sde"):
    eager_gi(e, x, alpha, w[:, :3], h)
  with pytest.raises(ValueError, match="impl"):
    eager_gi(e, x, alpha, w, h, impl="fast")


# ------------------------------------------------ the paper's equivalences (our convention)


def _one_pair(u_bd, v_bd, w_de, h_e):
  """GIN on a single pair (f = m = S = 1, alpha = 1)."""
  return gi(u_bd[:, None], v_bd[:, None], jnp.ones((1, 1, 1)), w_de[None], h_e[None])[:, 0]


def _uv(d=6, b=3, seed=11):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return jax.random.normal(k1, (b, d)), jax.random.normal(k2, (b, d))


def test_identity_w_gives_hadamard_product_nfm():
  u, v = _uv()
  _close(_one_pair(u, v, jnp.eye(6), jnp.ones(6)), u * v)


def test_identity_w_summed_gives_inner_product_ipnn():
  u, v = _uv()
  _close(jnp.sum(_one_pair(u, v, jnp.eye(6), jnp.ones(6)), -1), jnp.sum(u * v, -1))


def test_fm_second_order_term_over_all_fields():
  """FM: sum_{u<v} <e_u, e_v> with alpha = upper-triangular ones, W = I, h = 1."""
  e = jax.random.normal(jax.random.key(3), (4, 6, 5))
  alpha = jnp.triu(jnp.ones((6, 6)), k=1)[None]
  out = jnp.sum(gi(e, e, alpha, jnp.eye(5)[None], jnp.ones((1, 5)))[:, 0], -1)
  fm = 0.5 * (jnp.sum(e.sum(1) ** 2, -1) - jnp.sum(e**2, (1, 2)))  # Rendle's identity
  _close(out, fm)


def test_all_ones_w_gives_outer_product_opnn():
  """OPNN: with W = 1 and h^s = one-hot(s) over S = d subspaces, P[s] = column s of u outer v."""
  u, v = _uv(d=4)
  d = 4
  out = gi(u[:, None], v[:, None], jnp.ones((d, 1, 1)), jnp.ones((d, d, d)), jnp.eye(d))
  _close(jnp.swapaxes(out, 1, 2), jnp.einsum("bd,be->bde", u, v))


def test_scaled_identity_gives_fwfm_weighted_inner_product():
  """FwFM: sum_{u<v} r_uv <e_u, e_v>, as W = c I (per pair via alpha = r_uv / c)."""
  e = jax.random.normal(jax.random.key(4), (3, 5, 4))
  r = jnp.triu(jax.random.normal(jax.random.key(5), (5, 5)), k=1)
  c = 2.5
  out = jnp.sum(gi(e, e, (r / c)[None], c * jnp.eye(4)[None], jnp.ones((1, 4)))[:, 0], -1)
  _close(out, jnp.einsum("uv,bud,bvd->b", r, e, e))
  u, v = _uv()
  _close(jnp.sum(_one_pair(u, v, c * jnp.eye(6), jnp.ones(6)), -1), c * jnp.sum(u * v, -1))


def test_rank_one_w_gives_dcn_cross():
  """DCN: W[d, e] = w[e] (all rows equal), h = 1 gives x0 * (x_l . w)."""
  x0, xl = _uv(d=8)
  w = jax.random.normal(jax.random.key(9), (8,))
  out = _one_pair(x0, xl, jnp.broadcast_to(w, (8, 8)), jnp.ones(8))
  _close(out, x0 * (xl @ w)[:, None])


def test_free_w_gives_dcn_m_cross():
  """DCN-M (Lemma 3.2): free W, h = 1 gives x0 * (W x_l)."""
  x0, xl = _uv(d=8)
  w = jax.random.normal(jax.random.key(10), (8, 8))
  _close(_one_pair(x0, xl, w, jnp.ones(8)), x0 * (xl @ w.T))


def test_subspaces_with_identity_w_give_one_cin_layer_xdeepfm():
  """xDeepFM (Lemma 3.3): X^k[h] = sum_ij W^{k,h}_ij (X^{k-1}_i * X^0_j), S = H_k subspaces."""
  b, f, m, d, hk = 3, 5, 4, 6, 7
  x0 = jax.random.normal(jax.random.key(1), (b, f, d))
  xk = jax.random.normal(jax.random.key(2), (b, m, d))
  cin_w = jax.random.normal(jax.random.key(3), (hk, m, f))  # [h, i over X^{k-1}, j over X^0]
  cin = np.einsum("hij,bid,bjd->bhd", cin_w, xk, x0)
  alpha = jnp.swapaxes(cin_w, 1, 2)  # alpha[s, u (X^0), v (X^{k-1})]
  out = gi(x0, xk, alpha, jnp.broadcast_to(jnp.eye(d), (hk, d, d)), jnp.ones((hk, d)))
  _close(out, cin)


def test_dynamic_alpha_gives_autoint_attention():
  """AutoInt (Lemma 3.4): head output sum_j softmax_j(q_s . k_j) v_j.

  In our convention: B_0 = the value vectors, B_{l-1} = {1} (one all-ones
  vector), W = I, h = 1, S = n subspaces (one per query) and the dynamic
  alpha^s_{u,1} = softmax_u(q_s . k_u).
  """
  b, n, d = 2, 5, 4
  q, k, v = (jax.random.normal(jax.random.key(i), (b, n, d)) for i in range(3))
  attn = jax.nn.softmax(jnp.einsum("bsd,bud->bsu", q, k), axis=-1)
  expected = jnp.einsum("bsu,bud->bsd", attn, v)

  def one(v_nd, attn_su):
    return gi(
      v_nd[None],
      jnp.ones((1, 1, d)),
      attn_su[:, :, None],
      jnp.broadcast_to(jnp.eye(d), (n, d, d)),
      jnp.ones((n, d)),
    )[0]

  _close(jax.vmap(one)(v, attn), expected)


@pytest.mark.gpu
def test_gpu_bfloat16_kernel_matches_float32_reference():
  """On a GPU (run with JAX_PLATFORMS=cuda): bf16 inputs, f32 accumulation, paper layer 1."""
  args = _inputs(256, 39, 39, 16, 3)
  gpu = jax.devices("gpu")[0]
  args = jax.device_put(args, gpu)
  out = jax.jit(gi)(args[0].astype(jnp.bfloat16), args[1].astype(jnp.bfloat16), *args[2:])
  assert out.dtype == jnp.float32 and out.devices() == {gpu}
  ref = gi(*args, impl="reference")
  _close(out, ref, rtol=3e-2)
