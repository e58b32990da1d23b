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
      {"multi_valued": {"hist": {"pooling": "attention", "target": "price"}},
       "numeric": ["price"]},
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
  pooled = models.embed_rows({"t": e.reshape(15, 4)}, jnp.arange(15).reshape(3, 5), values,
                             (1, 1, 3), unit)["t"]  # fmt: skip
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
