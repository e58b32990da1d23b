"""The baselines (gin_jax.models.baselines): each model against a numpy loop over its original
paper's formula, each Table 2 reduction against the GIN layer so configured, gradients,
1 vs 8 devices, and one tiny end-to-end run per model through the trainer."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gin_jax import config as config_lib
from gin_jax import models as model_lib
from gin_jax import scoring, training
from gin_jax.config import ModelConfig, TrainConfig
from gin_jax.models import baselines, registry
from gin_jax.training import partitioning
from gin_jax.training import steps as steps_lib

BASELINES = sorted(set(registry.MODELS) - {"gin", "lr"})
WITH_LINEAR = {"fm", "deepfm", "fwfm", "afm", "xdeepfm"}
B, F, D, ROWS = 3, 5, 4, 40


def _cfg(arch, **kw):
  base = dict(
    arch=arch,
    embed_dim=D,
    mlp_hidden=(6,),
    num_layers=2,
    attention_factor=3,
    cin_maps=4,
    attention_heads=2,
    attention_head_dim=3,
  )
  return ModelConfig(**{**base, **kw})


def _init(spec, seed):
  """init_state as the trainer calls it: under jit (op by op it costs seconds a model)."""
  return jax.jit(lambda key: model_lib.init_state(spec, key))(jax.random.key(seed))


def _setup(arch, seed=0, **kw):
  """(module with randomised params, numpy params, ids, values, E [b, f, d])."""
  spec = model_lib.ModelSpec(_cfg(arch, **kw), F, ROWS, ROWS)
  graphdef, _, _ = model_lib.abstract_state(spec)
  params, stats = _init(spec, seed)
  # Perturb every parameter, so that no init structure (r = 1, zero biases) hides a bug.
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda x: x + 0.3 * rng.standard_normal(x.shape, np.float32), params)
  ids = rng.integers(0, ROWS, (B, F)).astype(np.int32)
  values = rng.uniform(0.5, 1.5, (B, F)).astype(np.float32)
  module = nnx.merge(graphdef, params, stats)
  e = np.asarray(params["projection"]["table"])[ids] * values[..., None]
  return module, jax.tree.map(lambda x: np.asarray(x, np.float64), params), ids, values, e


# ------------------------------------------------------- numpy readings of the papers


def _relu(x):
  return np.maximum(x, 0.0)


def _dense(p, x):
  return x @ p["kernel"] + (p["bias"] if "bias" in p else 0.0)


def _mlp(p, x):
  i = 0
  while f"dense_{i}" in p:
    x = _relu(_dense(p[f"dense_{i}"], x))
    i += 1
  return x


def _softmax(x):
  z = np.exp(x - np.max(x))
  return z / np.sum(z)


def _linear_terms(p, ids, values, i):
  return sum(p["projection"]["linear"][ids[i, j], 0] * values[i, j] for j in range(F))


def _pairs():
  return [(i, j) for i in range(F) for j in range(i + 1, F)]


def ref_fm(p, ids, values, e, i):
  """Rendle 2010, eq. 1: w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j."""
  y = p["bias"] + _linear_terms(p, ids, values, i)
  for u, v in _pairs():
    y += np.dot(e[i, u], e[i, v])
  return y


def ref_deepfm(p, ids, values, e, i):
  """Guo et al. 2017: y = sigmoid(y_FM + y_DNN)."""
  return ref_fm(p, ids, values, e, i) + _dense(p["deep_output"], _mlp(p["mlp"], e[i].ravel()))[0]


def ref_fwfm(p, ids, values, e, i):
  """Pan et al. 2018, eq. 3: w0 + sum_i w_i x_i + sum_{i<j} r_ij <v_i, v_j> x_i x_j."""
  y = p["bias"] + _linear_terms(p, ids, values, i)
  for k, (u, v) in enumerate(_pairs()):
    y += p["pair_weight"][k] * np.dot(e[i, u], e[i, v])
  return y + _dense(p["deep_output"], _mlp(p["mlp"], e[i].ravel()))[0]


def ref_afm(p, ids, values, e, i):
  """Xiao et al. 2017, eq. 5-6: p^T sum_{i<j} a_ij (v_i * v_j) x_i x_j,
  a = softmax over pairs of h^T ReLU(W (v_i * v_j) + b)."""
  products = [e[i, u] * e[i, v] for u, v in _pairs()]
  scores = [_dense(p["attention_h"], _relu(_dense(p["attention"], z)))[0] for z in products]
  a = _softmax(np.array(scores))
  pooled = sum(a_k * z for a_k, z in zip(a, products))
  deep = _mlp(p["mlp"], e[i].ravel())
  return _linear_terms(p, ids, values, i) + _dense(p["output"], np.concatenate([pooled, deep]))[0]


def ref_ipnn(p, ids, values, e, i):
  """Qu et al. 2016: the first hidden layer reads z (embeddings) and p_ij = <f_i, f_j>."""
  products = [np.dot(e[i, u], e[i, v]) for u, v in _pairs()]
  return _dense(p["output"], _mlp(p["mlp"], np.concatenate([e[i].ravel(), products])))[0]


def ref_opnn(p, ids, values, e, i):
  """Qu et al. 2016, superposition: p = sum_i sum_j f_i f_j^T."""
  outer = sum(np.outer(e[i, u], e[i, v]) for u in range(F) for v in range(F))
  return _dense(p["output"], _mlp(p["mlp"], np.concatenate([e[i].ravel(), outer.ravel()])))[0]


def _cross_net(p, x0, full_rank):
  x = x0
  for layer in range(2):
    c = p[f"cross_{layer}"]
    if full_rank:  # Wang et al. 2020, eq. 1: x_{l+1} = x0 * (W_l x_l + b_l) + x_l
      x = x0 * (c["w"] @ x + c["bias"]) + x
    else:  # Wang et al. 2017, eq. 3: x_{l+1} = x0 x_l^T w_l + b_l + x_l
      x = np.outer(x0, x) @ c["w"] + c["bias"] + x
  return x


def ref_dcn(p, ids, values, e, i, full_rank=False):
  x0 = e[i].ravel()
  features = np.concatenate([_cross_net(p, x0, full_rank), _mlp(p["mlp"], x0)])
  return _dense(p["output"], features)[0]


def ref_dcnv2(p, ids, values, e, i):
  return ref_dcn(p, ids, values, e, i, full_rank=True)


def ref_xdeepfm(p, ids, values, e, i):
  """Lian et al. 2018, eq. 6: X^k_h = sum_i sum_j W^{k,h}_ij (X^{k-1}_i * X^0_j); sum-pooled."""
  x0, x, pooled = e[i], e[i], []
  for layer in range(2):
    alpha = p[f"cin_{layer}"]["alpha"]  # stored as alpha[h, j (X^0), i (X^{k-1})]
    w = np.transpose(alpha, (0, 2, 1))  # W^{k,h}_ij
    new = np.zeros((w.shape[0], D))
    for h in range(w.shape[0]):
      for a in range(x.shape[0]):
        for b in range(F):
          new[h] += w[h, a, b] * (x[a] * x0[b])
    pooled.append(new.sum(axis=1))
    x = new
  features = np.concatenate([*pooled, _mlp(p["mlp"], e[i].ravel())])
  return _linear_terms(p, ids, values, i) + _dense(p["output"], features)[0]


def _interacting_layer(c, x, heads=2, head_dim=3):
  """Song et al. 2019, eq. 5-8 for one sample: x [f, in] -> [f, heads * head_dim]."""
  out = np.zeros((x.shape[0], heads * head_dim))
  for h in range(heads):
    cols = slice(h * head_dim, (h + 1) * head_dim)
    q, k, v = (x @ c[name]["kernel"][:, cols] for name in ("query", "key", "value"))
    for m in range(x.shape[0]):
      a = _softmax(np.array([np.dot(q[m], k[j]) for j in range(x.shape[0])]))
      out[m, cols] = sum(a[j] * v[j] for j in range(x.shape[0]))
  return _relu(out + x @ c["residual"]["kernel"])


def ref_autoint(p, ids, values, e, i):
  x = e[i]
  for layer in range(2):
    x = _interacting_layer(p[f"attention_{layer}"], x)
  features = np.concatenate([x.ravel(), _mlp(p["mlp"], e[i].ravel())])
  return _dense(p["output"], features)[0]


REFERENCES = {
  "fm": ref_fm,
  "deepfm": ref_deepfm,
  "fwfm": ref_fwfm,
  "afm": ref_afm,
  "ipnn": ref_ipnn,
  "opnn": ref_opnn,
  "dcn": ref_dcn,
  "dcnv2": ref_dcnv2,
  "xdeepfm": ref_xdeepfm,
  "autoint": ref_autoint,
}


def _close(a, b, rtol=1e-5):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = max(np.abs(b).max(), 1e-6)
  np.testing.assert_allclose(a / scale, b / scale, atol=rtol, rtol=0)


@pytest.mark.parametrize("impl", ["factorized", "reference"])
@pytest.mark.parametrize("arch", BASELINES)
def test_model_equals_numpy_reading_of_its_paper(arch, impl):
  module, p, ids, values, e = _setup(arch, interaction_impl=impl)
  # Compiled as one program (op by op, AFM's pair loops dispatched thousands of ops).
  logits = jax.jit(lambda ids, values: module(ids, values))(jnp.asarray(ids), jnp.asarray(values))
  expected = [REFERENCES[arch](p, ids, values, e.astype(np.float64), i) for i in range(B)]
  _close(logits, expected)


@pytest.mark.parametrize("arch", BASELINES)
def test_forward_and_gradient_shapes_and_row_tables(arch):
  spec = model_lib.ModelSpec(_cfg(arch), F, ROWS, 48)
  graphdef, _, _ = model_lib.abstract_state(spec)
  params, stats = _init(spec, 0)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, ROWS, (8, F)), jnp.int32)

  def loss(params):
    logits, _ = model_lib.apply_model(graphdef, params, stats, ids, jnp.ones((8, F)), {})
    return jnp.mean(jax.nn.softplus(logits)), logits

  grads, logits = jax.jit(jax.grad(loss, has_aux=True))(params)
  assert logits.shape == (8,) and np.all(np.isfinite(logits))
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  for g, x in zip(jax.tree.leaves(grads), jax.tree.leaves(params)):
    assert g.shape == x.shape and np.all(np.isfinite(g))
  # Every per-row parameter is a named table of the projection (trained row-sparsely).
  tables = model_lib.row_tables(params)
  assert set(tables) == ({"table", "linear"} if arch in WITH_LINEAR else {"table"})
  assert all(t.shape[0] == 48 for t in tables.values())
  assert np.any(np.asarray(grads["projection"]["table"]) != 0)
  assert model_lib.alpha_tree(params) == {}  # nothing to prune


@pytest.mark.parametrize("arch", BASELINES)
def test_exports_with_a_symbolic_batch(arch):
  """What gin_jax.score.export does: lower the scoring function for any batch size."""
  module, _, ids, values, _ = _setup(arch)
  graphdef, params, stats = nnx.split(module, nnx.Param, ...)

  def score(params, ids, values):
    return model_lib.apply_model(graphdef, params, stats, ids, values, {})[0]

  b = jax.export.symbolic_shape("b")[0]
  args = (
    jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params),
    jax.ShapeDtypeStruct((b, F), jnp.int32),
    jax.ShapeDtypeStruct((b, F), jnp.float32),
  )
  exported = jax.export.export(jax.jit(score), platforms=("cpu",))(*args)
  score = jax.jit(score)  # the reference compiled too: op by op AFM takes seconds
  _close(exported.call(params, ids, values), score(params, ids, values))
  _close(exported.call(params, ids[:1], values[:1]), score(params, ids[:1], values[:1]))


def test_table4_defaults_apply_when_arch_switches():
  cfg = config_lib.override(
    config_lib.criteo_paper(), {"model.arch": "dcn", "train.stages": "single"}
  )
  assert cfg.model.num_layers == 3  # DCN L = 3, not GIN's 2
  cfg = config_lib.override(
    config_lib.criteo_bars(), {"model.arch": "dcnv2", "train.stages": "single"}
  )
  assert cfg.model.num_layers == 2
  cfg = config_lib.override(
    config_lib.criteo_paper(),
    {"model.arch": "dcn", "model.num_layers": "1", "train.stages": "single"},
  )
  assert cfg.model.num_layers == 1  # an explicit override wins
  m = ModelConfig()
  assert (m.attention_factor, m.cin_maps, m.attention_heads, m.attention_head_dim) == (
    3,
    100,
    3,
    16,
  )
  with pytest.raises(ValueError, match="model.cin_maps must be >= 1"):
    ModelConfig(cin_maps=0)


# ------------------------------------------------ Table 2: the GIN layer so configured


def _gin_layer(alpha_sfm, w_sde, h_se):
  """GIN's InteractionLayer (model.py) with the given alpha, W and h."""
  s, f, m = alpha_sfm.shape
  layer = model_lib.InteractionLayer(f, m, s, w_sde.shape[-1], 0.0, rngs=nnx.Rngs(0))
  layer.alpha = nnx.Param(jnp.asarray(alpha_sfm, jnp.float32))
  layer.w = nnx.Param(jnp.asarray(w_sde, jnp.float32))
  layer.h = nnx.Param(jnp.asarray(h_se, jnp.float32))
  return layer


def _eye(s, d):
  return np.broadcast_to(np.eye(d), (s, d, d))


@pytest.mark.parametrize("arch", ["fm", "deepfm"])
def test_table2_fm_is_gin_with_identity_w_and_unit_alpha_on_pairs(arch):
  module, _, _, _, e = _setup(arch)
  gin = _gin_layer(np.triu(np.ones((1, F, F)), 1), _eye(1, D), np.ones((1, D)))
  _close(jnp.sum(gin(e, e)[:, 0], -1), module.interaction(jnp.asarray(e)))


def test_table2_fwfm_is_gin_with_free_alpha():
  module, p, _, _, e = _setup("fwfm")
  alpha = np.zeros((1, F, F))
  alpha[0][np.triu_indices(F, 1)] = p["pair_weight"]
  gin = _gin_layer(alpha, _eye(1, D), np.ones((1, D)))
  _close(jnp.sum(gin(e, e)[:, 0], -1), module.interaction(jnp.asarray(e)))


def test_table2_ipnn_products_are_gin_with_one_subspace_per_pair():
  module, _, _, _, e = _setup("ipnn")
  iu, ju = np.triu_indices(F, 1)
  alpha = np.zeros((len(iu), F, F))
  alpha[np.arange(len(iu)), iu, ju] = 1.0
  gin = _gin_layer(alpha, _eye(len(iu), D), np.ones((len(iu), D)))
  _close(jnp.sum(gin(e, e), -1), module.interaction(jnp.asarray(e)))


def test_table2_opnn_is_gin_with_all_ones_w_and_one_hot_h():
  module, _, _, _, e = _setup("opnn")
  gin = _gin_layer(np.ones((D, F, F)), np.ones((D, D, D)), np.eye(D))
  _close(gin(e, e), module.interaction(jnp.asarray(e)))


def test_table2_afm_is_gin_with_alpha_from_the_attention_net():
  module, _, _, _, e = _setup("afm")
  z = baselines.pair_products(jnp.asarray(e))
  attention = np.asarray(module.attention_weights(z))
  pooled = np.asarray(module.interaction(jnp.asarray(e)))
  iu, ju = np.triu_indices(F, 1)
  for i in range(B):  # alpha = MLP(Z) differs per sample: one GIN layer each
    alpha = np.zeros((1, F, F))
    alpha[0, iu, ju] = attention[i]
    gin = _gin_layer(alpha, _eye(1, D), np.ones((1, D)))
    _close(gin(e[i : i + 1], e[i : i + 1])[0, 0], pooled[i])


@pytest.mark.parametrize("arch", ["dcn", "dcnv2"])
def test_table2_cross_layers_are_gin_on_the_concatenated_embedding(arch):
  module, p, _, _, e = _setup(arch)
  x0 = e.reshape(B, 1, F * D)
  xl = np.random.default_rng(3).normal(size=(B, 1, F * D)).astype(np.float32)
  w = p["cross_0"]["w"]
  w_full = np.broadcast_to(w, (F * D, F * D)) if arch == "dcn" else w  # DCN: rows tied
  gin = _gin_layer(np.ones((1, 1, 1)), w_full[None], np.ones((1, F * D)))
  cross = module.cross_0.interaction(jnp.asarray(x0[:, 0]), jnp.asarray(xl[:, 0]))
  _close(gin(x0, xl)[:, 0], cross)


def test_table2_cin_is_gin_with_one_subspace_per_feature_map():
  module, p, _, _, e = _setup("xdeepfm")
  maps = module.cin_maps(jnp.asarray(e))
  x = e
  for layer in range(2):
    alpha = p[f"cin_{layer}"]["alpha"]
    gin = _gin_layer(alpha, _eye(alpha.shape[0], D), np.ones((alpha.shape[0], D)))
    x = np.asarray(gin(e, x))  # GIN stacks layers the same way: B_l = P_l
    _close(x, maps[layer])


def test_table2_autoint_head_is_gin_with_softmax_alpha_over_values():
  """Lemma 3.4 as tests/test_interaction.py reads it: B_0 = the head's values, B_{l-1} =
  {1}, W = I, h = 1, one subspace per query field, alpha_{s,u} = softmax_u(q_s . k_u)."""
  module, _, _, _, e = _setup("autoint")
  layer = module.attention_0
  a_bhfg, v_bghk = (np.asarray(t) for t in layer.attention(jnp.asarray(e)))
  heads = np.einsum("bhfg,bghk->bfhk", a_bhfg, v_bghk)
  for i in range(B):
    for h in range(2):
      gin = _gin_layer(a_bhfg[i, h][:, :, None], _eye(F, 3), np.ones((F, 3)))
      _close(gin(v_bghk[i : i + 1, :, h], np.ones((1, 1, 3)))[0], heads[i, :, h])


# ------------------------------------------------ sharded training, end to end


def _train(ndev, model_cfg, steps=3, fields=7, rows=64, batch=32):
  mesh = partitioning.make_mesh(jax.devices()[:ndev])
  spec = model_lib.ModelSpec(model_cfg, fields, rows, model_lib.padded_table_rows(rows, 8))
  fns = steps_lib.build(spec, TrainConfig(learning_rate=1e-2), mesh)
  state = fns.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(steps):
    local = {
      "ids": rng.integers(0, rows, (batch, fields)).astype(np.int32),
      "values": rng.uniform(0.5, 1.5, (batch, fields)).astype(np.float32),
      "labels": rng.integers(0, 2, batch).astype(np.float32),
    }
    state, metrics = fns.train_step(state, partitioning.shard_batch(mesh, local))
    losses.append(float(metrics["loss"]))
  probs = fns.eval_step(
    state["params"], state["batch_stats"], state["masks"], partitioning.shard_batch(mesh, local)
  )
  return np.array(losses), np.asarray(probs), state


@pytest.mark.parametrize("arch", ["dcnv2", "autoint", "fm"])
def test_eight_devices_match_one_device(arch):
  cfg = _cfg(arch, mlp_hidden=(8,), mlp_batch_norm=True)
  loss1, probs1, _ = _train(1, cfg)
  loss8, probs8, state8 = _train(8, cfg)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  np.testing.assert_allclose(probs8, probs1, rtol=1e-4, atol=1e-6)
  for table in model_lib.row_tables(state8["params"]).values():
    assert len({s.device for s in table.addressable_shards}) == 8  # rows sharded


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("data_cache")


def _tiny(arch):
  cfg = config_lib.override(
    config_lib.tiny(),
    {
      "model.arch": arch,
      "train.stages": "single",
      "train.epochs": "1",
      "train.checkpoint_every": "100",
    },
  )
  # Keep xDeepFM's n = 100 maps off the tiny run's clock.
  return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, cin_maps=8))


@pytest.mark.slow
@pytest.mark.parametrize("arch", [*BASELINES, "lr"])
def test_tiny_run_end_to_end_then_scores_from_its_checkpoint(arch, tmp_path, data_cache):
  (tmp_path / "data").mkdir()
  (tmp_path / "data" / "cache").symlink_to(data_cache)  # one preparation for every model
  rep = training.run(_tiny(arch), tmp_path, devices=jax.devices()[:1])
  result = rep["stages"]["train"]
  assert 0.5 < result["test_auc"] <= 1.0 and result["test_logloss"] > 0
  assert rep["kept_pairs"] is None and rep["planted_pair_recall"] is None
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["arch"] == arch
  # Scoring reloads the model from its checkpoint: same test AUC as the report.
  from gin_jax import data, metrics

  _, splits = data.prepare(config_lib.Config.from_dict(saved).data, tmp_path / "data" / "cache")
  test = splits["test"]
  probs = scoring.Scorer.from_checkpoint(tmp_path, devices=jax.devices()[:1]).predict_batch(
    test.ids, test.values
  )
  assert metrics.evaluate(np.asarray(test.labels), probs)["auc"] == pytest.approx(
    result["test_auc"], abs=1e-6
  )
