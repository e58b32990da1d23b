"""Behaviour sequences (DESIGN.md section 9): shared embedding rows and target attention.

The data side (one vocabulary counted over both columns, the owner's block of rows,
its OOV and missing ids, hashing, Parquet lists, growth under --init-from, the
refusals) and the model side (DIN's activation unit: padding weighs 0, an empty
list is the missing vector, every model sees f fields, the row-sparse step equals
the dense one) in isolation; then training on write_history_csv, where the click
depends on how many history items share the candidate's latent group.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gin_jax import config, models
from gin_jax.config import ATTENTION_MISSING, DataConfig
from gin_jax.data import DataError, prepare, synthetic
from gin_jax.data.encode import encode_records
from gin_jax.data.formats import CsvSchema
from gin_jax.training import partitioning
from gin_jax.training import steps as steps_lib

BASE = {"label": "y", "categorical": ["user", "item"], "multi_valued": {"hist": "|"}}


def _schema(**extra) -> dict:
  out = json.loads(json.dumps(BASE))
  for key, value in extra.items():
    out[key] = value
  return out


# ------------------------------------------------------------------ the schema


@pytest.mark.parametrize(
  "extra, message",
  [
    ({"share_embedding": {"hist": "price"}, "numeric": ["price"]}, "'price' is a numeric column"),
    ({"share_embedding": {"hist": "nope"}}, "'nope' is not a categorical or multi-valued"),
    ({"share_embedding": {"hist": "hist"}}, "cannot share its own rows"),
    ({"share_embedding": {"hist": "user", "user": "item"}}, "'user' shares the rows of 'item'"),
    ({"share_embedding": ["hist", "item"]}, "'share_embedding' must map a column"),
    ({"multi_valued": {"hist": {"pooling": "attention"}}}, "attention needs a target"),
    ({"multi_valued": {"hist": {"target": "item"}}}, "only attention takes one"),
    (
      {"multi_valued": {"hist": {"pooling": "attention", "target": "tags"}, "tags": "|"}},
      "target 'tags' is a multi-valued column",
    ),
    (
      {"multi_valued": {"hist": {"pooling": "attention", "target": "price"}}, "numeric": ["price"]},
      "target 'price' is a numeric column",
    ),  # fmt: skip
  ],
)
def test_the_schema_refuses_what_cannot_share_or_attend(extra, message):
  with pytest.raises(DataError, match=message):
    CsvSchema.from_dict(_schema(**extra), "s.yaml")


def test_a_schema_without_sequences_keeps_its_dict():
  """The new keys appear only when used: older datasets keep their cache keys."""
  schema = CsvSchema.from_dict(_schema())
  assert schema.to_dict()["multi_valued"] == {
    "hist": {"separator": "|", "max_values": None, "pooling": "mean"}
  }
  assert "share_embedding" not in schema.to_dict()
  shared = CsvSchema.from_dict(_schema(share_embedding={"hist": "item"}))
  assert shared.to_dict()["share_embedding"] == {"hist": "item"}
  assert CsvSchema.from_dict(shared.to_dict()) == shared


# ------------------------------------------------------------------ preparation

# item "a" 3 times as a candidate; "b" once as a candidate and once in a history;
# "h" twice, only in histories; "z" once in a history.
ROWS = """y,user,item,hist
1,u1,a,h|b
0,u2,a,
1,u1,b,h|z
0,u3,a,a
"""


def _prepare(tmp_path, schema: dict, rows: str = ROWS, name: str = "d", **options):
  (tmp_path / f"{name}.csv").write_text(rows)
  (tmp_path / f"{name}.json").write_text(json.dumps(schema))
  cfg = DataConfig(
    format="csv", train=str(tmp_path / f"{name}.csv"), schema=str(tmp_path / f"{name}.json"),
    split=(1.0, 0.0, 0.0), **options,
  )  # fmt: skip
  return prepare(cfg, tmp_path / "cache", progress=False)


def test_a_shared_column_uses_its_owners_vocabulary_counted_over_both(tmp_path):
  schema = _schema(share_embedding={"hist": "item"})
  meta, splits = _prepare(tmp_path, schema, min_count=2)
  item, hist = meta.field("item"), meta.field("hist")
  # Counted over both columns: a (4), b (2), h (2) reach min_count 2; z (1) does not.
  assert meta.vocab["item"] == ["a", "b", "h"] and "hist" not in meta.vocab
  assert (hist.offset, hist.size, hist.shares) == (item.offset, item.size, "item")
  assert meta.num_table_rows == meta.field("user").size + item.size  # one block
  ids = np.asarray(splits["train"].ids)
  at = {f.name: sum(g.max_values for g in meta.fields[:k]) for k, f in enumerate(meta.fields)}
  a, b, h = (item.offset + 2 + k for k in range(3))
  oov, missing = item.offset, item.offset + 1
  assert ids[:, at["item"]].tolist() == [a, a, b, a]
  assert ids[0, at["hist"] : at["hist"] + 2].tolist() == [h, b]  # the candidate's own rows
  assert ids[2, at["hist"] : at["hist"] + 2].tolist() == [h, oov]  # z: below min_count
  assert ids[1, at["hist"]] == missing and ids[3, at["hist"]] == a


def test_attention_values_mask_the_slots_and_mark_an_empty_list(tmp_path):
  schema = _schema(multi_valued={"hist": {"max_values": 3, "pooling": "attention",
                                          "target": "item"}})  # fmt: skip
  meta, splits = _prepare(tmp_path, schema)
  assert meta.attention == ((2, 1),)
  at = meta.fields[0].max_values + meta.fields[1].max_values
  values = np.asarray(splits["train"].values)[:, at : at + 3]
  np.testing.assert_array_equal(
    values, [[1, 1, 0], [ATTENTION_MISSING, 0, 0], [1, 1, 0], [1, 0, 0]]
  )


def test_hashing_gives_a_shared_pair_the_same_buckets(tmp_path):
  schema = _schema(share_embedding={"hist": "item"})
  meta, splits = _prepare(tmp_path, schema, hash_buckets=50)
  assert meta.field("hist").transform == meta.field("item").transform == "hash"
  assert meta.field("hist").offset == meta.field("item").offset
  ids = np.asarray(splits["train"].ids)
  item_col, hist_col = 1, 2
  assert ids[3, hist_col] == ids[0, item_col]  # "a" in a history, "a" as a candidate
  assert ids[0, hist_col + 1] == ids[2, item_col]  # "b"


def test_parquet_lists_share_an_integer_columns_rows(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  table = pa.table({
    "y": [1, 0, 1], "user": ["u1", "u2", "u1"], "item": [7, 8, 7],
    "hist": pa.array([[8, 9], [], [7]], pa.list_(pa.int64())),
  })  # fmt: skip
  pq.write_table(table, tmp_path / "t.parquet")
  (tmp_path / "s.json").write_text(json.dumps(_schema(share_embedding={"hist": "item"})))
  cfg = DataConfig(format="parquet", train=str(tmp_path / "t.parquet"),
                   schema=str(tmp_path / "s.json"), split=(1.0, 0.0, 0.0), min_count=1)  # fmt: skip
  meta, splits = prepare(cfg, tmp_path / "cache", progress=False)
  assert meta.vocab["item"] == ["7", "8", "9"]  # 7 and 8 twice, over both columns
  ids = np.asarray(splits["train"].ids)
  nine = meta.field("item").offset + 2 + 2
  assert ids[0, 2:4].tolist() == [ids[1, 1], nine] and ids[2, 2] == ids[0, 1]


def test_a_tampered_meta_with_a_shared_pair_of_two_encodings_is_refused(tmp_path):
  meta, _ = _prepare(tmp_path, _schema(share_embedding={"hist": "item"}))
  d = meta.to_dict()
  hist = next(f for f in d["fields"] if f["name"] == "hist")
  hist["transform"] = "hash"
  with pytest.raises(DataError, match="shares the rows of 'item' but is encoded by hash"):
    type(meta).from_dict(d)


def test_growth_under_init_from_counts_the_history_too(tmp_path):
  schema = _schema(share_embedding={"hist": "item"})
  base, _ = _prepare(tmp_path, schema)
  new_rows = "y,user,item,hist\n1,u1,c,a|n\n0,u2,a,n\n"
  (tmp_path / "new.csv").write_text(new_rows)
  cfg = DataConfig(format="csv", train=str(tmp_path / "new.csv"),
                   schema=str(tmp_path / "d.json"), split=(1.0, 0.0, 0.0))  # fmt: skip
  grown, splits = prepare(cfg, tmp_path / "cache", progress=False, base=base)
  old = base.vocab["item"]
  assert grown.vocab["item"][: len(old)] == old  # old ids kept
  # n: twice, in histories only (min_count 2); c: once, as a candidate
  assert grown.vocab["item"][len(old) :] == ["n"]
  assert grown.growth["item"]["added"] == 1 and "hist" not in grown.growth
  assert grown.field("hist").offset == grown.field("item").offset


def test_records_encode_a_history_as_its_file_does(tmp_path):
  meta, splits = _prepare(tmp_path, _schema(share_embedding={"hist": "item"}))
  columns = {"user": ["u1", "u2", "u1", "u3"], "item": ["a", "a", "b", "a"],
             "hist": [["h", "b"], [], "h|z", ["a"]]}  # fmt: skip
  split, bad = encode_records(meta, columns, 4)
  assert not bad
  np.testing.assert_array_equal(split.ids, splits["train"].ids)
  np.testing.assert_array_equal(split.values, splits["train"].values)


# ------------------------------------------------------------------ the unit


def _unit(field_slots=(1, 1, 3), pairs=((2, 1),), width=4, hidden=(8,)):
  return models.TargetAttention(field_slots, pairs, width, hidden, rngs=nnx.Rngs(params=0))


def test_the_unit_weighs_values_ignores_padding_and_passes_the_missing_row():
  unit = _unit()
  rng = np.random.default_rng(0)
  e = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
  values = jnp.asarray([
    [1, 1, 1, 1, 0],  # two history values, one padding slot
    [1, 1, ATTENTION_MISSING, 0, 0],  # an empty history
    [1, 1, 1, 1, 1],
  ], jnp.float32)  # fmt: skip
  w = np.asarray(unit(e, values))
  np.testing.assert_array_equal(w[:, :2], 1.0)  # single-valued fields: their values
  a = np.asarray(unit.scores(0, e[:, 2:5], e[:, 1]))
  np.testing.assert_allclose(w[0, 2:], [a[0, 0], a[0, 1], 0.0], rtol=1e-6)
  np.testing.assert_array_equal(w[1, 2:], [1.0, 0.0, 0.0])
  np.testing.assert_allclose(w[2, 2:], a[2], rtol=1e-6)
  # The pooled history: sum_i a_i h_i; an empty one is exactly its missing row.
  pooled = models.embed_rows({"table": e.reshape(15, 4)}, jnp.arange(15).reshape(3, 5), values,
                             (1, 1, 3), unit)["table"]  # fmt: skip
  np.testing.assert_allclose(pooled[0, 2], a[0, 0] * e[0, 2] + a[0, 1] * e[0, 3], rtol=1e-5)
  np.testing.assert_array_equal(pooled[1, 2], e[1, 2])


def test_the_unit_depends_on_the_target():
  unit = _unit()
  e = jnp.asarray(np.random.default_rng(1).normal(size=(1, 5, 4)), jnp.float32)
  values = jnp.ones((1, 5), jnp.float32)
  other = e.at[:, 1].set(-e[:, 1])
  assert not np.allclose(unit(e, values), unit(other, values))


@pytest.mark.parametrize("arch", sorted(config.ARCHS))
def test_every_model_sees_f_fields_with_an_attention_field(arch):
  cfg = config.ModelConfig(arch=arch, embed_dim=4, mlp_hidden=(8,),
                           **config.ARCH_DEFAULTS.get(arch, {}))  # fmt: skip
  spec = models.ModelSpec(cfg, 3, 20, 24, field_slots=(1, 1, 3), attention=((2, 1),))
  params, stats = models.init_state(spec, jax.random.key(0))
  assert "target_attention" in params
  graphdef, _, _ = models.abstract_state(spec)
  ids = jnp.asarray([[0, 5, 6, 7, 20], [1, 5, 3, 20, 20]])
  values = jnp.asarray([[1, 1, 1, 1, 0], [1, 1, ATTENTION_MISSING, 0, 0]], jnp.float32)
  logits, _ = models.apply_model(graphdef, params, stats, ids, values)
  assert logits.shape == (2,) and np.isfinite(np.asarray(logits)).all()
  # The history's values move the logit through the unit (it is part of the model).
  moved = ids.at[0, 3].set(9)
  assert not np.allclose(models.apply_model(graphdef, params, stats, moved, values)[0], logits)


def test_attention_over_a_list_of_one_slot_builds_and_weighs_it():
  """max_values 1: no field has several slots (DatasetMeta.field_slots None), the unit
  still weighs the one value (and passes an empty list's missing row)."""
  spec = models.ModelSpec(config.ModelConfig(embed_dim=4, mlp_hidden=(8,)), 3, 20, 24,
                          field_slots=None, attention=((2, 1),))  # fmt: skip
  params, stats = models.init_state(spec, jax.random.key(0))
  graphdef, _, _ = models.abstract_state(spec)
  ids = jnp.asarray([[0, 5, 6], [1, 5, 7]])
  values = jnp.asarray([[1, 1, 1], [1, 1, ATTENTION_MISSING]], jnp.float32)
  logits, _ = models.apply_model(graphdef, params, stats, ids, values)
  assert np.isfinite(np.asarray(logits)).all()


def test_without_attention_the_model_draws_what_it_drew_before():
  cfg = config.ModelConfig(embed_dim=4, mlp_hidden=(8,))
  plain = models.init_state(models.ModelSpec(cfg, 3, 20, 24, field_slots=(1, 1, 3)),
                            jax.random.key(0))[0]  # fmt: skip
  attn = models.init_state(
    models.ModelSpec(cfg, 3, 20, 24, field_slots=(1, 1, 3), attention=((2, 1),)),
    jax.random.key(0),
  )[0]
  jax.tree.map(np.testing.assert_array_equal, plain, {k: v for k, v in attn.items()
                                                       if k != "target_attention"})  # fmt: skip


# ------------------------------------------------------------------ the steps

ROWS, SLOTS = 24, (1, 1, 4)  # user, item, a 4-value history sharing item's rows 8..23


def _step_spec(padded_rows=ROWS + 2, **model):
  cfg = config.ModelConfig(embed_dim=4, num_layers=1, num_subspaces=2, mlp_hidden=(8,), **model)
  return models.ModelSpec(cfg, 3, ROWS, padded_rows, field_slots=SLOTS, attention=((2, 1),))


def _step_batch(rng, n=8):  # (1 = 8 devices with attention: test_multi_valued.py)
  ids = np.full((n, 6), ROWS, np.int32)  # history padding: one past the real rows
  values = np.zeros((n, 6), np.float32)
  ids[:, 0], ids[:, 1], values[:, :2] = rng.integers(0, 8, n), rng.integers(10, 24, n), 1.0
  for r in range(n):
    k = r % 5  # 0..4 history values; 0: an empty history, the item block's missing row 9
    ids[r, 2 : 2 + max(k, 1)] = rng.integers(10, 24, max(k, 1)) if k else 9
    values[r, 2 : 2 + max(k, 1)] = 1.0 if k else ATTENTION_MISSING
  return {"ids": ids, "values": values, "labels": rng.integers(0, 2, n).astype(np.float32)}


@pytest.mark.parametrize("model", [{}, {"first_order": True}, {"arch": "fm"}],
                         ids=["gin", "gin-first-order", "fm"])  # fmt: skip
def test_the_row_sparse_step_equals_the_dense_one_on_shared_rows(model):
  """One step of lazy Adam (the batch's unique rows only) against dense Adam (every
  parameter): with no L2, Adam's first step leaves an unused row where it is, so
  the two agree on every parameter, the unit's too, only if each shared row's
  gradient sums its uses as candidate and in histories; padding stays zero. With a
  first-order table too (its rows pooled by the unit's weights of the d-wide rows)."""
  mesh = partitioning.make_mesh(jax.devices()[:1])
  batch = _step_batch(np.random.default_rng(0))
  assert set(batch["ids"][:, 1]) & set(batch["ids"][:, 2:].ravel())  # rows used both ways
  out = {}
  for opt in ("adam", "lazy_adam"):
    cfg = config.TrainConfig(learning_rate=1e-2, embedding_optimizer=opt, embedding_l2=0.0)
    fns = steps_lib.build(_step_spec(**model), cfg, mesh)
    state, _ = fns.train_step(fns.init(jax.random.key(0)), partitioning.shard_batch(mesh, batch))
    out[opt] = jax.device_get(state["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7),
               out["lazy_adam"], out["adam"])  # fmt: skip
  np.testing.assert_array_equal(out["lazy_adam"]["projection"]["table"][ROWS:], 0.0)


# ------------------------------------------------------------------ training

SEEDS = (0, 1, 2)


def _history_config(tmp_path, seed: int, pooling: str, shared: bool, rows=8000, **over):
  path = tmp_path / f"history_{seed}_{rows}.csv"
  if not path.exists():
    synthetic.write_history_csv(path, num_rows=rows, seed=seed)
  name = f"{pooling}_{'shared' if shared else 'own'}"
  schema = tmp_path / f"{name}.json"
  schema.write_text(json.dumps(synthetic.history_schema(pooling, shared=shared)))
  return config.override(config.tiny(), {
    "data.format": "csv", "data.train": str(path), "data.schema": str(schema),
    "data.min_count": "1", "model.embed_dim": "8", "train.batch_size": "256",
    "train.learning_rate": "1e-2", "train.epochs": "4", "train.seed": str(seed),
    "train.stages": "single", **over,
  })  # fmt: skip


@pytest.fixture(scope="module")
def history_runs(tmp_path_factory):
  """{(seed, schema): (workdir, report)}: attention over shared rows and mean pooling
  over a vocabulary of its own on write_history_csv (8,000 rows), 3 seeds; and with
  seed 0, attention + shared through search -> prune -> retrain ("aoanet")."""
  from gin_jax import runtime, training

  runtime.init_runtime()
  root = tmp_path_factory.mktemp("history")
  out = {}
  plan = [(s, v, "single") for s in SEEDS for v in ("attention_shared", "mean_own")]
  for seed, variant, stages in [*plan, (0, "attention_shared", "aoanet")]:
    pooling, shared = variant.split("_")
    cfg = _history_config(root, seed, pooling, shared == "shared", **{"train.stages": stages})
    wd = root / f"{variant}_{seed}_{stages}"
    out[seed, variant if stages == "single" else stages] = (
      wd,
      training.run(cfg, wd, devices=jax.devices()[:1]),
    )
  return out


def test_attention_over_shared_rows_learns_the_history_effect_far_better(history_runs):
  """Measured (4 epochs of the tiny preset, valid AUC): attention + shared 0.738 /
  0.752 / 0.665, mean + own vocabulary 0.557 / 0.603 / 0.581 (seeds 0, 1, 2): a
  margin of 0.08-0.18, 0.14 on average. Held to about half of it: > 0.04 for each
  seed, > 0.07 on average."""
  margins = []
  for seed in SEEDS:
    attention = history_runs[seed, "attention_shared"][1]["stages"]["train"]["valid_auc"]
    mean = history_runs[seed, "mean_own"][1]["stages"]["train"]["valid_auc"]
    margins.append(attention - mean)
  assert min(margins) > 0.04 and np.mean(margins) > 0.07, margins


def test_the_unit_weighs_related_history_items_above_unrelated_ones(history_runs, tmp_path):
  """The trained unit of seed 0: for every candidate item, the mean a_i of history
  items of its own latent group against the mean a_i of the others."""
  from gin_jax import scoring

  wd, _ = history_runs[0, "attention_shared"]
  loaded = scoring.load_checkpoint(wd, devices=jax.devices()[:1])
  meta, params = loaded.dataset_meta, jax.device_get(loaded.state["params"])
  _, group = synthetic.write_history_csv(tmp_path / "again.csv", num_rows=10, seed=0)
  item = meta.field("item_id")
  tokens = meta.vocab["item_id"]
  rows = np.asarray(params["projection"]["table"])[item.offset + 2 : item.offset + 2 + len(tokens)]
  groups = np.array([group[int(t[1:])] for t in tokens])
  spec = models.ModelSpec(loaded.cfg.model, meta.num_fields, meta.num_table_rows,
                          meta.num_table_rows, meta.field_slots, meta.attention)  # fmt: skip
  unit = nnx.merge(*nnx.split(spec.build(jax.random.key(0)))).target_attention
  nnx.update(unit, nnx.State(params["target_attention"]))
  h = jnp.broadcast_to(jnp.asarray(rows)[None], (len(tokens), *rows.shape))
  a = np.asarray(unit.scores(0, h, jnp.asarray(rows)))  # [candidate, history item]
  same = groups[:, None] == groups[None, :]
  related = np.array([a[c, same[c]].mean() for c in range(len(tokens))])
  unrelated = np.array([a[c, ~same[c]].mean() for c in range(len(tokens))])
  assert (related > unrelated).mean() > 0.9, related - unrelated
  assert related.mean() > unrelated.mean() + 0.1, (related.mean(), unrelated.mean())


def test_kept_pairs_name_the_pooled_history_like_any_field(history_runs):
  report = history_runs[0, "aoanet"][1]
  kept = {tuple(sorted(p)) for p in report["kept_pairs"]}
  assert ("history", "item_id") in kept, report["kept_pairs"]  # the planted pair


def test_scorer_export_and_server_score_a_history_alike(history_runs, tmp_path):
  """The attention + shared model of seed 0 scored from its checkpoint, from its
  export, and served (rows with their history as a JSON list; and one ranking
  request: the user and history in `context`, the candidates' items as inputs)."""
  import http.client

  from gin_jax import scoring
  from gin_jax.serving import ServeOptions, Service

  wd, _ = history_runs[0, "attention_shared"]
  synthetic.write_history_csv(tmp_path / "h.csv", num_rows=30, seed=7)
  header, *lines = (tmp_path / "h.csv").read_text().splitlines()
  rows = [line.split(",")[1:] for line in lines]  # user, item_id, context, history
  rows[0][3] = ""  # an empty history: the missing vector
  path = tmp_path / "score.csv"
  path.write_text("user,item_id,context,history\n" + "\n".join(",".join(r) for r in rows) + "\n")
  expected = scoring.Scorer.from_checkpoint(wd, devices=jax.devices()[:1]).predict_file(path)[0]
  base = tmp_path / "base"
  scoring.export_version(wd, base)
  exported = scoring.Scorer.from_export(base / "1").predict_file(path)[0]
  np.testing.assert_allclose(exported, expected, atol=1e-6)

  service = Service(ServeOptions(str(base), model_name="ctr", port=0, batch_sizes=(8, 32),
                                 max_batch=32, poll_seconds=0.1), log=lambda m: None)  # fmt: skip
  port = service.start()

  def request(method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
      conn.request(method, path, body and json.dumps(body), {"Content-Type": "application/json"})
      response = conn.getresponse()
      return response.status, json.loads(response.read())
    finally:
      conn.close()

  predict = lambda body: request("POST", "/v1/models/ctr:predict", body)  # noqa: E731
  try:
    deadline = time.monotonic() + 60
    while request("GET", "/v1/models/ctr")[0] != 200 and time.monotonic() < deadline:
      time.sleep(0.1)
    names = ("user", "item_id", "context", "history")
    instances = [
      {n: (v.split("|") if n == "history" else v) for n, v in zip(names, r) if v} for r in rows
    ]
    status, out = predict({"instances": instances})
    assert status == 200, out
    np.testing.assert_allclose(out["predictions"], expected, atol=1e-6)
    # Ranking: one user and history, every row's item as a candidate.
    user, history = rows[1][0], rows[1][3]
    ranked = [[user, r[1], r[2], history] for r in rows]
    path.write_text("user,item_id,context,history\n" + "\n".join(",".join(r) for r in ranked))
    want = scoring.Scorer.from_checkpoint(wd, devices=jax.devices()[:1]).predict_file(path)[0]
    body = {
      "context": {"user": user, "history": history.split("|")},
      "inputs": {"item_id": [r[1] for r in rows], "context": [r[2] for r in rows]},
    }
    status, out = predict(body)  # fmt: skip
    assert status == 200, out
    np.testing.assert_allclose(out["predictions"], want, atol=1e-6)
    assert np.std(want) > 0  # the candidates differ, so do their weights on the history
    status, meta = request("GET", "/v1/models/ctr/metadata")
    history = next(f for f in meta["fields"] if f["name"] == "history")
    assert status == 200 and history == {
      "name": "history", "kind": "multi_valued", "transform": "vocab", "max_values": 20,
      "pooling": "attention", "target": "item_id", "shares": "item_id",
    }  # fmt: skip
  finally:
    service.stop()


def test_init_from_carries_the_unit_and_the_shared_rows_and_grows_them(history_runs, tmp_path):
  """A new day with 10 new items (in histories and as candidates): the continued run
  starts from the source's unit and rows (bit for bit), its item block grown by the
  new items, the history still on it; then trains and is scored."""
  from gin_jax import data, scoring, training
  from gin_jax.training import continuation, stages

  wd0, _ = history_runs[0, "attention_shared"]
  new_day = tmp_path / "day1.csv"
  synthetic.write_history_csv(new_day, num_rows=2000, seed=5, num_items=110)
  cfg = _history_config(tmp_path, 0, "attention", True, **{
    "data.train": str(new_day), "train.init_from": str(wd0), "train.epochs": "1"})  # fmt: skip
  cfg = continuation.resolve(cfg)[0]
  source = continuation.source_of(wd0)
  new, _ = prepare(cfg.data, tmp_path / "cache", progress=False, base=source.dataset)
  item = new.field("item_id")
  assert new.growth["item_id"]["added"] == 10 and new.field("history").offset == item.offset
  mesh = partitioning.make_mesh(jax.devices()[:1])
  spec = models.ModelSpec(cfg.model, new.num_fields, new.num_table_rows, new.num_table_rows,
                          new.field_slots, new.attention)  # fmt: skip
  fns = steps_lib.build(spec, cfg.train, mesh)
  fresh = fns.init(stages.init_key(cfg.train.seed, stages.plan(cfg.train.stages)[0]))
  start = jax.tree.map(np.asarray, continuation.start_state(source, fresh, fns, new, cfg))
  old = jax.tree.map(np.asarray, scoring.load_checkpoint(wd0, devices=jax.devices()[:1]).state)
  jax.tree.map(np.testing.assert_array_equal, start["params"]["target_attention"],
               old["params"]["target_attention"])  # fmt: skip
  src = continuation.row_map(source.dataset, new, new.num_table_rows)
  keep = src >= 0
  table = start["params"]["projection"]["table"]
  np.testing.assert_array_equal(table[keep], old["params"]["projection"]["table"][src[keep]])
  assert (~keep).sum() == 10

  report = training.run(cfg, tmp_path / "day1", devices=jax.devices()[:1])
  assert report["init_from"]["path"] == str(wd0)
  probs = scoring.Scorer.from_checkpoint(tmp_path / "day1", devices=jax.devices()[:1])
  cache = tmp_path / "day1" / "data" / "cache"
  _, splits = data.open_prepared(next(cache.glob("*/meta.json")).parent)
  assert np.isfinite(probs.predict_split(splits["valid"])).all()


def test_a_seed_ensemble_of_attention_models_averages_its_members(tmp_path):
  from gin_jax import data, metrics, scoring, training

  cfg = _history_config(tmp_path, 0, "attention", True, rows=2000,
                        **{"train.ensemble": "2", "train.epochs": "1"})  # fmt: skip
  wd = tmp_path / "run"
  report = training.run(cfg, wd, devices=jax.devices()[:1])
  assert report["stages"]["train"]["models"] == 2
  runs = [np.load(w / "predictions" / "train_valid.npz") for w in (wd, wd / "ensemble/member_1")]
  mean = (runs[0]["probs"].astype(np.float64) + runs[1]["probs"]) / 2
  assert not np.array_equal(runs[0]["probs"], runs[1]["probs"])
  auc = metrics.evaluate(runs[0]["labels"], mean)["auc"]
  assert report["stages"]["train"]["valid_auc"] == pytest.approx(auc, abs=1e-9)
  _, splits = data.open_prepared(next((wd / "data" / "cache").glob("*/meta.json")).parent)
  scored = scoring.Scorer.from_checkpoint(wd, devices=jax.devices()[:1]).predict_split(
    splits["valid"]
  )
  np.testing.assert_allclose(scored, mean, atol=1e-6)


def test_the_unit_is_the_mlp_of_the_concatenation():
  """scores() splits the first layer's kernel instead of concatenating [h, t, h - t,
  h * t]: the same function as the MLP on the concatenation."""
  unit = _unit(hidden=(8, 3))
  rng = np.random.default_rng(2)
  h = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  tb = jnp.broadcast_to(t[:, None], h.shape)
  x = jnp.concatenate([h, tb, h - tb, h * tb], axis=-1)
  *hidden, out = unit.unit_0
  for dense in hidden:
    x = jax.nn.relu(dense(x))
  np.testing.assert_allclose(unit.scores(0, h, t), out(x)[..., 0], rtol=1e-5, atol=1e-6)
