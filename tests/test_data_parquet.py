"""Parquet input and score output: equal to the TSV route on the same rows, part-file
datasets, column types, bad rows named file:row-group:row, the missing-pyarrow error."""

import dataclasses
import json
import sys

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from gin_jax.config import DataConfig  # noqa: E402
from gin_jax.data import (  # noqa: E402
  DataError,
  ParquetScoreWriter,
  SyntheticSpec,
  encode_file,
  prepare,
  write_criteo_tsv,
)
from gin_jax.data.formats import parquet  # noqa: E402

NUMERIC = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]
ROW_GROUP = 700  # Rows per row group of the test files.


def criteo_table(tsv_lines: list[str], label: bool = True):
  """The rows of a Criteo TSV as an Arrow table: int64 label and I1..I13, string C1..C26."""
  rows = [line.split("\t") for line in tsv_lines]
  cols = {"label": pa.array([int(r[0]) for r in rows], pa.int64())} if label else {}
  for i, name in enumerate(NUMERIC, 1):
    cols[name] = pa.array([int(r[i]) if r[i] else None for r in rows], pa.int64())
  for i, name in enumerate(CATEGORICAL, 14):
    cols[name] = pa.array([r[i] or None for r in rows], pa.string())
  return pa.table(cols)


def write_schema(path, **extra):
  path.write_text(
    json.dumps({"label": "label", "categorical": CATEGORICAL, "numeric": NUMERIC, **extra})
  )
  return str(path)


@pytest.fixture(scope="module")
def criteo(tmp_path_factory):
  """(TSV path, Parquet path, schema path, TSV lines) of the same 3000 synthetic rows."""
  d = tmp_path_factory.mktemp("parquet")
  tsv = d / "rows.tsv"
  write_criteo_tsv(tsv, SyntheticSpec(num_rows=3000, max_vocab=300, seed=3))
  lines = tsv.read_text().splitlines()
  path = d / "rows.parquet"
  pq.write_table(criteo_table(lines), path, row_group_size=ROW_GROUP)
  return tsv, path, write_schema(d / "schema.json"), lines


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
  monkeypatch.setattr(parquet, "CHUNK_ROWS", 300)  # Several chunks per row group.


def _cfg(fmt, path, schema=None, **kwargs):
  return DataConfig(format=fmt, train=str(path), schema=schema, **kwargs)


def _assert_same(a, b):
  (meta_a, splits_a), (meta_b, splits_b) = a, b
  assert meta_a.vocab == meta_b.vocab
  assert meta_a.fields == meta_b.fields and meta_a.split_rows == meta_b.split_rows
  for name in splits_a:
    for arr in ("ids", "values", "labels", "line_numbers"):
      np.testing.assert_array_equal(getattr(splits_a[name], arr), getattr(splits_b[name], arr))


@pytest.mark.parametrize(
  "options",
  [
    {"min_count": 2},
    {"hash_buckets": 1000},
    {"numeric": "scale", "min_count": 3},
    {"split_by": "line"},
  ],
  ids=["vocab", "hashing", "scale", "split_by_line"],
)
def test_prepare_equals_tsv_route(tmp_path, criteo, options):
  tsv, path, schema, lines = criteo
  from_tsv = prepare(_cfg("criteo", tsv, **options), tmp_path / "t", progress=False)
  from_parquet = prepare(_cfg("parquet", path, schema, **options), tmp_path / "p", progress=False)
  _assert_same(from_tsv, from_parquet)
  assert from_parquet[0].format == "parquet" and from_parquet[0].columns == [
    "label",
    *NUMERIC,
    *CATEGORICAL,
  ]
  # Scoring-time encoding of the whole file, labeled and not.
  want, _ = encode_file(from_tsv[0], tsv)
  got, report = encode_file(from_parquet[0], path)
  assert report.count == 0
  np.testing.assert_array_equal(got.ids, want.ids)
  np.testing.assert_array_equal(got.labels, want.labels)
  np.testing.assert_array_equal(got.line_numbers, np.arange(1, len(lines) + 1))
  unlabeled = tmp_path / "unlabeled.parquet"
  pq.write_table(criteo_table(lines, label=False), unlabeled)
  got, _ = encode_file(from_parquet[0], unlabeled)
  np.testing.assert_array_equal(got.ids, want.ids)
  assert np.isnan(got.labels).all()


def test_part_files_are_one_dataset_in_sorted_order(tmp_path, criteo):
  tsv, path, schema, lines = criteo
  table = criteo_table(lines)
  parts = tmp_path / "parts"
  (parts / "day=2").mkdir(parents=True)
  bounds = [0, 1000, 1700, 3000]
  names = ["day=1/part-0.parquet", "day=1/part-1.parquet", "day=2/part-0.parquet"]
  (parts / "day=1").mkdir()
  for name, a, b in zip(names, bounds[:-1], bounds[1:]):
    pq.write_table(table.slice(a, b - a), parts / name, row_group_size=400)
  (parts / "_SUCCESS").write_text("")  # Spark's markers are not parts.
  (parts / "day=1" / ".part-0.parquet.crc").write_bytes(b"\0\1")
  assert parquet.part_files(parts) == [str(parts / n) for n in names]
  want = prepare(_cfg("parquet", path, schema), tmp_path / "one", progress=False)
  _assert_same(want, prepare(_cfg("parquet", parts, schema), tmp_path / "dir", progress=False))
  glob = str(parts / "day=*" / "*.parquet")
  _assert_same(want, prepare(_cfg("parquet", glob, schema), tmp_path / "glob", progress=False))
  meta = prepare(_cfg("parquet", parts, schema), tmp_path / "dir", progress=False)[0]
  assert [p[0] for p in meta.inputs[0]["parts"]] == [str(parts / n) for n in names]


def test_a_new_part_invalidates_the_cache(tmp_path, criteo):
  _, _, schema, lines = criteo
  parts = tmp_path / "parts"
  parts.mkdir()
  table = criteo_table(lines)
  pq.write_table(table.slice(0, 1500), parts / "a.parquet")
  meta, _ = prepare(_cfg("parquet", parts, schema), tmp_path / "c", progress=False)
  pq.write_table(table.slice(1500), parts / "b.parquet")
  meta2, _ = prepare(_cfg("parquet", parts, schema), tmp_path / "c", progress=False)
  assert sum(meta.split_rows.values()) == 1500 and sum(meta2.split_rows.values()) == 3000


def _table(**cols):
  return pa.table({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in cols.items()})


def _prepare_table(tmp_path, table, schema: dict, name="t", **kwargs):
  path = tmp_path / f"{name}.parquet"
  pq.write_table(table, path, row_group_size=kwargs.pop("row_group_size", None))
  (tmp_path / f"{name}.json").write_text(json.dumps(schema))
  cfg = DataConfig(
    format="parquet",
    train=str(path),
    schema=str(tmp_path / f"{name}.json"),
    split=(1.0, 0.0, 0.0),
    min_count=1,
    **kwargs,
  )
  return path, prepare(cfg, tmp_path / f"cache-{name}", progress=False)


SCHEMA = {"label": "y", "categorical": ["c"], "numeric": ["x"]}


def test_column_types(tmp_path):
  """Integers, floats holding integers, dictionary strings and strings are the same
  categories; numbers as floats, decimals or strings are the same numbers."""
  import decimal

  tokens = ["7", None, "12", "7", "-3", "123456789012"]
  ints = [None if t is None else int(t) for t in tokens]
  floats = [np.nan if t is None else float(t) for t in tokens]
  x = [1.5, None, 2.0, 0.25, 10.0, 3.0]
  y = [1, 0, 1, 1, 0, 0]
  variants = {
    "strings": _table(
      y=y, c=pa.array(tokens), x=pa.array([None if v is None else str(v) for v in x])
    ),
    "ints": _table(y=pa.array(y, pa.int8()), c=pa.array(ints, pa.int64()), x=pa.array(x)),
    "floats": _table(y=pa.array(y, pa.float32()), c=pa.array(floats), x=pa.array(x, pa.float32())),
    "dictionary": _table(
      y=pa.array([bool(v) for v in y]),
      c=pa.array(tokens).dictionary_encode(),
      x=pa.array([None if v is None else decimal.Decimal(str(v)) for v in x]),
    ),
    "large": _table(y=pa.array([str(v) for v in y]), c=pa.array(tokens, pa.large_binary()), x=x),
  }
  results = {
    name: _prepare_table(tmp_path, table, SCHEMA, name)[1] for name, table in variants.items()
  }
  first = results.pop("strings")
  assert first[0].vocab["c"] == ["7", "12", "-3", "123456789012"]  # By count, then key.
  assert first[0].vocab["x"] == [1, 0, 2, 5]  # Buckets of 1.5 and 3, 0.25, 2, 10.
  for result in results.values():
    _assert_same(first, result)


def test_nan_is_missing_but_inf_is_a_bad_row(tmp_path):
  table = _table(y=[1, 0, 1], c=["a", "b", "c"], x=[1.0, float("nan"), float("inf")])
  path, (meta, splits) = _prepare_table(tmp_path, table, SCHEMA, bad_rows="skip")
  assert meta.skipped_rows[str(path)]["examples"] == [f"{path}:0:2: x: inf is not a finite number"]
  np.testing.assert_array_equal(splits["train"].line_numbers, [1, 2])
  assert splits["train"].ids[1, 1] == meta.field("x").offset + 1  # the missing id


# (column values with one bad row at index 5, reason). Every other row is fine.
GOOD = dict(y=[0, 1] * 5, c=[f"c{i}" for i in range(10)], x=[float(i) for i in range(10)])
BAD_ROWS = {
  "label_not_01": (dict(y=[0, 1, 0, 1, 0, 2, 0, 1, 0, 1]), "label 2 not in {0, 1}"),
  "label_null": (dict(y=[0, 1, 0, 1, 0, None, 0, 1, 0, 1]), "label null not in {0, 1}"),
  "label_string": (
    dict(y=["0", "1", "0", "1", "0", "yes", "0", "1", "0", "1"]),
    "label 'yes' not in {0, 1}",
  ),
  "label_float": (
    dict(y=[0.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.0, 1.0, 0.0, 1.0]),
    "label 0.5 not in {0, 1}",
  ),
  "numeric_string": (
    dict(x=["1", "2", "3", "4", "5", "abc", "7", "8", "9", ""]),
    "x: 'abc' is not a number",
  ),
  "numeric_inf": (
    dict(x=[1.0] * 5 + [float("-inf")] + [1.0] * 4),
    "x: -inf is not a finite number",
  ),
  "category_float": (dict(c=[1.0] * 5 + [1.5] + [2.0] * 4), "c: 1.5 is not an integer category"),
  "category_nul": (dict(c=["a"] * 5 + ["a\0b"] + ["b"] * 4), "c: NUL byte at byte 2"),
  "category_bad_utf8": (
    dict(c=pa.array([b"a"] * 5 + [b"ab\xffc"] + [b"b"] * 4, pa.binary())),
    "c: invalid UTF-8 byte 0xff at byte 3",
  ),
}


@pytest.mark.parametrize("chunk_rows", [1, 300], ids=["row_chunks", "group_chunks"])
@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_error_and_skip(tmp_path, monkeypatch, case, chunk_rows):
  monkeypatch.setattr(parquet, "CHUNK_ROWS", chunk_rows)  # 1: the row is not a chunk's first.
  cols, reason = BAD_ROWS[case]
  table = _table(**{**GOOD, **cols})
  path = tmp_path / "bad.parquet"
  pq.write_table(table, path, row_group_size=4)  # Row 5 is row 1 of row group 1.
  (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
  cfg = DataConfig(
    format="parquet",
    train=str(path),
    schema=str(tmp_path / "s.json"),
    split=(1.0, 0.0, 0.0),
    min_count=1,
  )
  with pytest.raises(DataError) as e:
    prepare(cfg, tmp_path / "c1", progress=False)
  assert str(e.value) == f"{path}:1:1: {reason}"
  skip = dataclasses.replace(cfg, bad_rows="skip")
  meta, splits = prepare(skip, tmp_path / "c2", progress=False)
  assert meta.skipped_rows[str(path)] == {"count": 1, "examples": [f"{path}:1:1: {reason}"]}
  np.testing.assert_array_equal(splits["train"].line_numbers, [1, 2, 3, 4, 5, 7, 8, 9, 10])
  s, report = encode_file(meta, path, bad_rows="skip")
  assert report.line_numbers == [6]
  np.testing.assert_array_equal(s.ids, splits["train"].ids)
  with pytest.raises(DataError, match=f"{path}:1:1: "):
    encode_file(meta, path)


def test_bad_row_in_a_later_part_names_that_part(tmp_path):
  parts = tmp_path / "parts"
  parts.mkdir()
  pq.write_table(_table(**GOOD), parts / "a.parquet")
  pq.write_table(_table(**{**GOOD, "y": [0, 1, 3, 0, 1, 0, 1, 0, 1, 0]}), parts / "b.parquet")
  (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
  cfg = DataConfig(
    format="parquet",
    train=str(parts),
    schema=str(tmp_path / "s.json"),
    bad_rows="skip",
    split=(1.0, 0.0, 0.0),
  )
  meta, splits = prepare(cfg, tmp_path / "c", progress=False)
  assert meta.skipped_rows[str(parts)]["examples"] == [
    f"{parts / 'b.parquet'}:0:2: label 3 not in {{0, 1}}"
  ]
  assert 13 not in splits["train"].line_numbers.tolist() and len(splits["train"]) == 19


def test_schema_and_file_errors(tmp_path):
  table = _table(**GOOD, note=["n"] * 10)
  path = tmp_path / "t.parquet"
  pq.write_table(table, path)
  cases = {
    json.dumps(SCHEMA): r"column\(s\) \['note'\] not named in the schema",
    json.dumps({**SCHEMA, "ignore": ["note"], "separator": ";"}): "apply to csv only",
    json.dumps(
      {**SCHEMA, "categorical": ["c", "zzz"], "ignore": ["note"]}
    ): r"\['zzz'\] not in the columns",
  }
  for text, match in cases.items():
    (tmp_path / "s.json").write_text(text)
    with pytest.raises(DataError, match=match):
      prepare(_cfg("parquet", path, str(tmp_path / "s.json")), tmp_path / "c", progress=False)
  (tmp_path / "s.json").write_text(json.dumps({**SCHEMA, "ignore": ["note"]}))
  with pytest.raises(DataError, match="needs a schema"):
    prepare(_cfg("parquet", path), tmp_path / "c", progress=False)
  stamp = _table(y=[0, 1], c=pa.array([1, 2], pa.timestamp("s")), x=[1.0, 2.0])
  pq.write_table(stamp, tmp_path / "ts.parquet")
  with pytest.raises(DataError, match=r"column 'c' has type timestamp\[ms\]"):
    prepare(
      _cfg("parquet", tmp_path / "ts.parquet", str(tmp_path / "s.json")),
      tmp_path / "c",
      progress=False,
    )
  (tmp_path / "nope.parquet").write_text("a,b\n1,2\n")
  with pytest.raises(DataError, match="nope.parquet: not a readable Parquet file"):
    prepare(
      _cfg("parquet", tmp_path / "nope.parquet", str(tmp_path / "s.json")),
      tmp_path / "c",
      progress=False,
    )
  with pytest.raises(DataError, match="no such file or directory"):
    prepare(
      _cfg("parquet", tmp_path / "missing", str(tmp_path / "s.json")),
      tmp_path / "c",
      progress=False,
    )
  with pytest.raises(DataError, match="no Parquet files"):
    prepare(
      _cfg("parquet", tmp_path / "*.nothing", str(tmp_path / "s.json")),
      tmp_path / "c",
      progress=False,
    )
  parts = tmp_path / "parts"
  parts.mkdir()
  pq.write_table(table, parts / "a.parquet")
  pq.write_table(table.drop_columns(["note"]), parts / "b.parquet")
  with pytest.raises(DataError, match=r"b.parquet: columns .* differ from those of"):
    prepare(_cfg("parquet", parts, str(tmp_path / "s.json")), tmp_path / "c", progress=False)


def test_missing_pyarrow_names_the_extra(tmp_path, monkeypatch, criteo):
  _, path, schema, _ = criteo
  monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError.
  with pytest.raises(DataError, match=r"pip install 'gin-jax\[parquet\]'.*-e '\.\[parquet\]'"):
    prepare(_cfg("parquet", path, schema), tmp_path / "c", progress=False)
  with pytest.raises(DataError, match="optional dependency"):
    ParquetScoreWriter(tmp_path / "scores.parquet")


def test_score_writer_one_row_group_per_chunk(tmp_path):
  out = tmp_path / "scores.parquet"
  with ParquetScoreWriter(out) as w:
    w.write(
      np.array([1, 2, 3]),
      np.array([0.25, np.nan, 0.5], np.float32),
      ["ok", "skipped: label 'x' not in {0, 1}", "ok"],
    )
    w.write(np.array([], np.int64), np.array([], np.float32), [])  # Nothing to write.
    w.write([4, 5], [0.125, 0.75], ["ok", "ok"])
  f = pq.ParquetFile(out)
  assert f.metadata.num_row_groups == 2 and f.metadata.num_rows == 5
  t = f.read()
  assert t.schema.names == ["line", "probability", "status"]
  assert t.column("line").to_pylist() == [1, 2, 3, 4, 5]
  assert t.column("probability").to_pylist() == [0.25, None, 0.5, 0.125, 0.75]
  assert t.column("status").to_pylist()[:2] == ["ok", "skipped: label 'x' not in {0, 1}"]
  with (
    pytest.raises(ValueError, match="lengths differ"),
    ParquetScoreWriter(tmp_path / "x.parquet") as w,
  ):
    w.write([1], [0.5, 0.5], ["ok"])
  with pytest.raises(RuntimeError), ParquetScoreWriter(tmp_path / "partial.parquet") as w:
    w.write([1], [0.5], ["ok"])
    raise RuntimeError("scoring failed half-way")
  assert not (tmp_path / "partial.parquet").exists()  # No partial file that reads as complete.
  empty = tmp_path / "empty.parquet"
  ParquetScoreWriter(empty).close()
  assert pq.read_table(empty).num_rows == 0


@pytest.mark.slow
def test_train_and_score_equal_tsv_route(tmp_path, criteo):
  """The tiny preset trained on the TSV and on the Parquet copy: same report, same scores."""
  import jax

  from gin_jax import config as config_lib
  from gin_jax import scoring, training

  tsv, path, schema, lines = criteo
  base = config_lib.tiny()
  inputs = {
    "tsv": (DataConfig(format="criteo", train=str(tsv), min_count=1), tsv),
    "parquet": (DataConfig(format="parquet", train=str(path), schema=schema, min_count=1), path),
  }
  reports, scores = {}, {}
  for name, (data, raw) in inputs.items():
    train = dataclasses.replace(base.train, epochs=1)
    cfg = dataclasses.replace(base, data=data, train=train)
    reports[name] = training.run(cfg, tmp_path / name, devices=jax.devices()[:1])
    scores[name] = scoring.Scorer.from_checkpoint(tmp_path / name).predict_file(raw)
  for stage, want in reports["tsv"]["stages"].items():
    got = reports["parquet"]["stages"][stage]
    for key in ("valid_auc", "valid_logloss", "test_auc", "test_logloss"):
      assert got[key] == pytest.approx(want[key], rel=1e-6), (stage, key)
  (p_tsv, y_tsv, l_tsv, bad_tsv), (p_pq, y_pq, l_pq, bad_pq) = scores["tsv"], scores["parquet"]
  assert len(p_pq) == len(lines) and bad_pq.count == bad_tsv.count == 0
  np.testing.assert_allclose(p_pq, p_tsv, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(y_pq, y_tsv)
  np.testing.assert_array_equal(l_pq, l_tsv)


def test_a_flipped_byte_in_a_checksummed_page_is_a_named_error(tmp_path):
  """Was: the flipped byte trained as another category, exit 0."""
  table = pa.table({"click": [1, 0] * 500, "user": [f"u{i % 37}" for i in range(1000)]})
  good = tmp_path / "good.parquet"
  pq.write_table(table, good, write_page_checksum=True, compression="NONE")
  data = bytearray(good.read_bytes())
  data[data.find(b"u17") + 1] ^= 0x01
  bad = tmp_path / "bad.parquet"
  bad.write_bytes(bytes(data))
  assert pq.ParquetFile(bad).read().num_rows == 1000  # read back without verification
  schema = tmp_path / "schema.yaml"
  schema.write_text("label: click\ncategorical: [user]\n")
  cfg = DataConfig(format="parquet", train=str(bad), schema=str(schema), min_count=1)
  with pytest.raises(DataError, match=rf"{bad}:0: cannot read the row group \(.*checksum"):
    prepare(cfg, tmp_path / "cache", progress=False)


def test_an_unreadable_footer_is_one_line(tmp_path):
  bad = tmp_path / "bad.parquet"
  bad.write_bytes(b"PAR1" + b"\x00garbage\n" * 4 + b"PAR1")
  schema = tmp_path / "schema.yaml"
  schema.write_text("label: click\ncategorical: [user]\n")
  with pytest.raises(DataError, match=f"{bad}: not a readable Parquet file") as e:
    prepare(DataConfig(format="parquet", train=str(bad), schema=str(schema)), tmp_path / "c")
  assert "\n" not in str(e.value)


# ------------------------------------------------------------------ issue 33

LIST_SCHEMA = {"label": "y", "categorical": ["c"], "multi_valued": {"t": "|"}}


def _list_table(values, value_type):
  n = len(values)
  return _table(y=[i % 2 for i in range(n)], c=["a"] * n, t=pa.array(values, pa.list_(value_type)))


def test_list_floats_and_booleans_follow_the_single_valued_rules(tmp_path):
  # They became the categories '135.5', 'nan', 'inf', 'true' and 'false'.
  ints = [[7, 12], [3], [], [1, 0]]
  want = _prepare_table(tmp_path, _list_table(ints, pa.int64()), LIST_SCHEMA, "ints")[1]
  floats = [[7.0, 12.0], [3.0], [], [1.0, 0.0]]
  got = _prepare_table(tmp_path, _list_table(floats, pa.float64()), LIST_SCHEMA, "floats")[1]
  _assert_same(want, got)
  bools = [[True], [False, True]]
  got = _prepare_table(tmp_path, _list_table(bools, pa.bool_()), LIST_SCHEMA, "bools")[1]
  assert got[0].vocab["t"] == ["1", "0"]  # as a single boolean category: 0 or 1
  bad = [[7.0], [135.5], [float("nan")], [2.0, float("inf")], [8.0]]
  path, (meta, splits) = _prepare_table(
    tmp_path, _list_table(bad, pa.float64()), LIST_SCHEMA, "bad", bad_rows="skip"
  )
  assert meta.skipped_rows[str(path)]["examples"] == [
    f"{path}:0:1: t: 135.5 is not an integer category",
    f"{path}:0:2: t: a NaN value in the list",
    f"{path}:0:3: t: inf is not an integer category",
  ]
  assert meta.vocab["t"] == ["7", "8"]
  np.testing.assert_array_equal(splits["train"].line_numbers, [1, 5])


@pytest.mark.parametrize(
  "values,shown",
  [
    ([[[1]], [[2]]], "list<element: list<element: int64>>: a list of list<element: int64>"),
    ([[{"a": 1}], [{"a": 2}]], "list<element: struct<a: int64>>: a list of struct<a: int64>"),
  ],
  ids=["list<list>", "list<struct>"],
)
def test_a_list_of_lists_or_structs_is_named_as_unsupported(tmp_path, values, shown):
  # Was "column 't' has type list<element: int64>; categorical columns take ...".
  table = _table(y=[0, 1], c=["a", "b"], t=pa.array(values))
  with pytest.raises(DataError) as e:
    _prepare_table(tmp_path, table, LIST_SCHEMA)
  assert str(e.value) == (
    f"{tmp_path / 't.parquet'}: column 't' has type {shown}, which is not supported; "
    "multi_valued columns take lists of strings, binary, integers, booleans or floats "
    "holding integers"
  )


def test_a_0_byte_part_is_an_empty_part(tmp_path):
  # docs/data.md allows empty parts; a 0-byte Parquet part was "not a readable Parquet file".
  parts = tmp_path / "parts"
  parts.mkdir()
  pq.write_table(_table(**GOOD), parts / "a.parquet")
  (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
  want = prepare(_cfg("parquet", parts, str(tmp_path / "s.json")), tmp_path / "a", progress=False)
  for name in ("0.parquet", "b.parquet"):  # before and after the part with rows
    (parts / name).write_bytes(b"")
  got = prepare(_cfg("parquet", parts, str(tmp_path / "s.json")), tmp_path / "b", progress=False)
  _assert_same(want, got)
  (parts / "a.parquet").write_bytes(b"")
  with pytest.raises(DataError, match=f"^{parts / '0.parquet'}: empty file$"):
    prepare(_cfg("parquet", parts, str(tmp_path / "s.json")), tmp_path / "c", progress=False)
