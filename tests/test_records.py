"""Records held in memory (serving requests) encode as the same rows written to a file.

Each dataset is prepared from a hand-written file; its rows are then encoded twice,
as text (data.encode_rows, what `gin_jax.score` does) and as columns of JSON values
(data.encode.encode_records, what `gin_jax.serve` does), and the ids and values must
be equal.
"""

import numpy as np
import pytest

from gin_jax.config import DataConfig
from gin_jax.data import encode_rows, prepare
from gin_jax.data.encode import encode_records
from gin_jax.data.meta import MISSING, OOV

CSV_SCHEMA = """label: click
categorical: [user, item]
numeric: [price]
multi_valued:
  genres: "|"
  history: {separator: " ", max_values: 3, pooling: sum}
"""
CSV_ROWS = [
  "1,u1,i1,2.5,Comedy|Drama,7 8",
  "0,u2,i2,,,1 2 3 4 5",
  "1,u1,i1,100,Comedy,",
  "0,u3,i-a-very-long-item,-3,A-very-long-genre-name|Drama,9",
  "1,u1,i2,7,Drama,7",
]
# Rows to score: seen, unseen (OOV), missing, long tokens, a list over max_values.
CSV_SCORE = [
  "u1,i1,2.5,Comedy|Drama,7 8",
  "u9,,,Horror,1 2 3 4 5 6",
  ",i-a-very-long-item,1e3,A-very-long-genre-name,",
  "u2,i2,0.25,,9",
]
CSV_RECORDS = {
  "user": ["u1", "u9", None, "u2"],
  "item": ["i1", "", "i-a-very-long-item", "i2"],
  "price": [2.5, None, "1e3", 0.25],
  "genres": [["Comedy", "Drama"], "Horror", ["A-very-long-genre-name"], []],
  "history": [[7, 8], "1 2 3 4 5 6", None, ["9"]],
}


def _csv_dataset(tmp_path, **options):
  (tmp_path / "schema.yaml").write_text(CSV_SCHEMA)
  path = tmp_path / "train.csv"
  path.write_text("click,user,item,price,genres,history\n" + "\n".join(CSV_ROWS) + "\n")
  cfg = DataConfig(
    format="csv", train=str(path), schema=str(tmp_path / "schema.yaml"), split=(1, 0, 0),
    min_count=1, max_values=4, **options,
  )  # fmt: skip
  return prepare(cfg, tmp_path / "cache", progress=False)[0]


def _same(meta, rows, records, header=None):
  text = encode_rows(meta, rows, header=header)
  split, bad = encode_records(meta, records, len(rows))
  assert bad == {}
  np.testing.assert_array_equal(split.ids, text.ids)
  np.testing.assert_array_equal(split.values, text.values)
  return split


@pytest.mark.parametrize(
  "options",
  [{"numeric": "bucketize"}, {"numeric": "scale"}, {"hash_buckets": 16}],
  ids=["bucketize", "scale", "hashing"],
)
def test_csv_records_encode_as_the_rows_of_a_file(tmp_path, options):
  meta = _csv_dataset(tmp_path, **options)
  header = ["user", "item", "price", "genres", "history"]
  split = _same(meta, CSV_SCORE, CSV_RECORDS, header=header)
  user = meta.field("user")
  if not options.get("hash_buckets"):
    assert split.ids[1, 0] == user.offset + OOV  # u9 is unseen
  assert split.ids[2, 0] == user.offset + MISSING


def test_criteo_records_encode_as_the_rows_of_a_file(tmp_path):
  rng = np.random.default_rng(0)
  rows = []
  for i in range(40):
    ints = [str(int(x)) if x >= 0 else "" for x in rng.integers(-2, 50, 13)]
    cats = [f"{int(x):08x}" if x else "" for x in rng.integers(0, 6, 26)]
    cats[3] = "a-category-of-more-than-8-bytes" if i % 3 else cats[3]
    rows.append("\t".join([str(i % 2), *ints, *cats]))
  path = tmp_path / "train.tsv"
  path.write_text("\n".join(rows) + "\n")
  cfg = DataConfig(format="criteo", train=str(path), split=(1, 0, 0), min_count=1)
  meta = prepare(cfg, tmp_path / "cache", progress=False)[0]
  score = [r.split("\t", 1)[1] for r in rows[:7]] + ["\t".join(["5"] * 13 + ["unseen"] * 26)]
  records = {}
  for j, name in enumerate(meta.field_names):
    column = [r.split("\t")[j] for r in score]
    if name.startswith("I"):  # numbers as JSON numbers, missing as null
      records[name] = [int(x) if x else None for x in column]
    else:
      records[name] = [x or None for x in column]
  _same(meta, score, records)


def test_libfm_records_encode_as_the_rows_of_a_file(tmp_path):
  rows = ["1 3:1 10:0.5 20:1", "0 4:1 11:1 20:2", "1 3:1 10:1 21:1", "0 5:2 12:1 20:1"]
  path = tmp_path / "train.libfm"
  path.write_text("\n".join(rows) + "\n")
  cfg = DataConfig(format="libfm", train=str(path), split=(1, 0, 0), min_count=1)
  meta = prepare(cfg, tmp_path / "cache", progress=False)[0]
  score = ["3:1 10:0.5 20:1", "9:1 11:3 21:1"]
  records = {"f0": [3, "9:1"], "f1": ["10:0.5", "11:3"], "f2": ["20", 21]}
  _same(meta, score, records)


@pytest.mark.parametrize(
  "field,value,reason",
  [
    ("user", 1.5, "user: 1.5 is not a category"),
    ("user", {"a": 1}, "user: {'a': 1} is not a category"),
    ("user", "x\0y", "user: NUL byte"),
    ("user", "x" * 2000, "user: a category of 2000 bytes"),
    ("price", "1_000", "price: '1_000' is not a number"),
    ("price", "abc", "price: 'abc' is not a number"),
    ("price", float("inf"), "price: inf is not a finite number"),
    ("price", [1], "price: [1] is not a number"),
    ("genres", 5, "genres: 5 is not a list of categories"),
    ("genres", ["a", None], "genres: None in the list is not a category"),
    ("genres", ["a", ""], "genres: an empty value in the list"),
  ],
)
def test_a_bad_value_names_its_record_and_field(tmp_path, field, value, reason):
  meta = _csv_dataset(tmp_path)
  records = {k: list(v) for k, v in CSV_RECORDS.items()}
  records[field][2] = value
  _, bad = encode_records(meta, records, 4)
  assert list(bad) == [2] and bad[2].startswith(reason), bad


def test_criteo_numbers_must_be_integers_as_in_its_files(tmp_path):
  rows = ["\t".join(["1", *["3"] * 13, *["ab"] * 26]), "\t".join(["0", *["4"] * 13, *["cd"] * 26])]
  path = tmp_path / "train.tsv"
  path.write_text("\n".join(rows) + "\n")
  meta = prepare(
    DataConfig(format="criteo", train=str(path), split=(1, 0, 0), min_count=1),
    tmp_path / "cache",
    progress=False,
  )[0]
  records = {name: ["ab", "ab", "ab"] for name in meta.field_names}
  for name in meta.field_names[:13]:
    records[name] = [3, 3.0, "3"]
  records["I2"] = [2.5, 3, "3.5"]
  _, bad = encode_records(meta, records, 3)
  assert bad == {0: "I2: 2.5 is not an integer", 2: "I2: '3.5' is not an integer"}


def test_a_context_encodes_once_as_if_every_record_held_it(tmp_path):
  meta = _csv_dataset(tmp_path)
  context = {"user": "u1", "price": "2.5", "genres": ["Drama"]}
  others = {k: v for k, v in CSV_RECORDS.items() if k not in context}
  repeated = {**others, **{k: [v] * 4 for k, v in context.items()}}
  once, bad = encode_records(meta, others, 4, context=context)
  every, bad_every = encode_records(meta, repeated, 4)
  assert bad == bad_every == {}
  np.testing.assert_array_equal(once.ids, every.ids)
  np.testing.assert_array_equal(once.values, every.values)
  absent, _ = encode_records(meta, {"user": ["u1"] * 4}, 4)  # a field no record has
  missing, _ = encode_records(meta, {**{k: [None] * 4 for k in CSV_RECORDS}, "user": ["u1"] * 4}, 4)
  np.testing.assert_array_equal(absent.ids, missing.ids)
  _, bad = encode_records(meta, others, 4, context={**context, "price": "cheap"})
  assert bad == {-1: "price: 'cheap' is not a number"}


def test_stacked_key_index_gives_each_tables_own_ids_collisions_and_layouts_included():
  """The Encoder looks every vocabulary field up at once; the ids must be the
  per-field tables' own, for keys that collide and for a column-major key matrix
  (a fancy-indexed selection), which once lost the probed ids."""
  from gin_jax.data import vocab

  rng = np.random.default_rng(0)
  tables, queries = [], []
  for f in range(6):
    keys = rng.integers(1, 2**63, 40 + 200 * f, dtype=np.uint64)
    tables.append(vocab.KeyIndex(keys, np.arange(len(keys)) + 1000 * f))
    queries.append(np.concatenate([keys[:300], rng.integers(1, 2**63, 50, dtype=np.uint64)])[:90])
  stacked = vocab.StackedKeyIndex(tables)
  matrix = np.stack(queries, 1)
  expected = np.stack([t.lookup(matrix[:, j], -7) for j, t in enumerate(tables)], 1)
  for keys in (matrix, np.asfortranarray(matrix), matrix[:, [0, 1, 2, 3, 4, 5]]):
    np.testing.assert_array_equal(stacked.lookup(keys, np.full(6, -7, np.int32)), expected)
  assert (expected != -7).sum() > 300  # found keys, some of them probed past a collision
