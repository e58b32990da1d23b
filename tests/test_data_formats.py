"""Readers: every format on tiny hand-written fixtures, tokenisation, stable hashing.

Encoded ids are checked against a plain-Python reference that reads the fixtures with
str.split, so the vectorised parser is compared with the obvious implementation.
"""

import gc
import gzip
import inspect
import math
import shutil
import weakref
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gin_jax.config import FORMATS, DataConfig
from gin_jax.data import (
  DatasetMeta,
  encode,
  encode_file,
  encode_rows,
  formats,
  hashing,
  prepare,
  text,
  token_values,
)
from gin_jax.data.meta import MISSING, OOV

FIXTURES = Path(__file__).parent / "fixtures"


def _prepare(tmp_path, **kwargs):
  kwargs = {"split": (1.0, 0.0, 0.0), "min_count": 1, **kwargs}
  return prepare(DataConfig(**kwargs), tmp_path / "cache", progress=False)


def _bucket(x: float) -> int:
  return math.floor(math.log(x) ** 2) if x > 2 else int(x)


def _decode(meta, ids: np.ndarray) -> list[list]:
  """ids -> per field: the vocabulary entry, "OOV" or "MISSING" (order independent)."""
  out = []
  for row in ids.tolist():
    dec = []
    for f, i in zip(meta.fields, row):
      assert f.offset <= i < f.offset + f.size, (f.name, i)
      k = i - f.offset
      dec.append("OOV" if k == OOV else "MISSING" if k == MISSING else meta.vocab[f.name][k - 2])
    out.append(dec)
  return out


def _reference_criteo(lines: list[str], min_count: int) -> list[list]:
  rows = [line.split("\t") for line in lines]
  values = []
  for r in rows:
    values.append([_bucket(int(t)) if t else None for t in r[1:14]] + [t or None for t in r[14:]])
  counts = [Counter(v[j] for v in values if v[j] is not None) for j in range(39)]
  return [
    ["MISSING" if x is None else x if counts[j][x] >= min_count else "OOV" for j, x in enumerate(v)]
    for v in values
  ]


@pytest.mark.parametrize("min_count", [1, 2, 3])
def test_criteo_matches_python_reference(tmp_path, min_count):
  path = FIXTURES / "criteo_small.tsv"
  meta, splits = _prepare(tmp_path, format="criteo", train=str(path), min_count=min_count)
  lines = path.read_text().splitlines()
  train = splits["train"]
  assert meta.field_names == [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
  assert len(train) == 10 and meta.split_rows == {"train": 10, "valid": 0, "test": 0}
  np.testing.assert_array_equal(train.labels, [float(x.split("\t")[0]) for x in lines])
  np.testing.assert_array_equal(train.line_numbers, np.arange(1, 11))
  assert _decode(meta, np.asarray(train.ids)) == _reference_criteo(lines, min_count)
  # Stacked blocks: offsets are the running sum of sizes; every block has OOV+missing.
  offsets = np.cumsum([0] + [f.size for f in meta.fields])
  assert [f.offset for f in meta.fields] == offsets[:-1].tolist()
  assert meta.num_table_rows == offsets[-1]
  assert all(f.size == 2 + len(meta.vocab[f.name]) for f in meta.fields)
  assert not meta.has_values and np.all(np.asarray(train.values) == 1.0)
  assert train.ids.dtype == np.int32 and train.labels.dtype == np.float32


def test_gzip_input_equals_plain(tmp_path):
  plain = FIXTURES / "criteo_small.tsv"
  gz = tmp_path / "day_0.gz"  # Detected by its magic bytes, not its name.
  gz.write_bytes(gzip.compress(plain.read_bytes()))
  m1, s1 = _prepare(tmp_path, format="criteo", train=str(plain))
  m2, s2 = _prepare(tmp_path, format="criteo", train=str(gz))
  np.testing.assert_array_equal(s1["train"].ids, s2["train"].ids)
  assert m1.vocab == m2.vocab


def test_multi_member_gzip(tmp_path):
  lines = (FIXTURES / "criteo_small.tsv").read_bytes().splitlines(keepends=True)
  gz = tmp_path / "two.gz"
  gz.write_bytes(gzip.compress(b"".join(lines[:4])) + gzip.compress(b"".join(lines[4:])))
  _, s = _prepare(tmp_path, format="criteo", train=str(gz))
  assert len(s["train"]) == 10


def test_crlf_and_missing_final_newline_are_accepted(tmp_path):
  src = (FIXTURES / "criteo_small.tsv").read_bytes()
  crlf = tmp_path / "crlf.tsv"
  crlf.write_bytes(src.replace(b"\n", b"\r\n").rstrip(b"\r\n"))
  _, s1 = _prepare(tmp_path, format="criteo", train=str(FIXTURES / "criteo_small.tsv"))
  _, s2 = _prepare(tmp_path, format="criteo", train=str(crlf))
  np.testing.assert_array_equal(s1["train"].ids, s2["train"].ids)
  np.testing.assert_array_equal(s2["train"].line_numbers, np.arange(1, 11))


@pytest.mark.parametrize("schema", ["clicks_schema.yaml", "clicks_schema.json"])
def test_csv_with_schema(tmp_path, schema):
  meta, splits = _prepare(
    tmp_path, format="csv", train=str(FIXTURES / "clicks.csv"), schema=str(FIXTURES / schema)
  )
  train = splits["train"]
  assert meta.field_names == ["user", "item", "category", "price", "age"]  # Header order.
  assert [f.kind for f in meta.fields] == ["categorical"] * 3 + ["numeric"] * 2
  assert meta.columns == ["click", "user", "item", "category", "price", "age", "note"]
  np.testing.assert_array_equal(train.labels, [1, 0, 0, 1, 0, 1, 0, 0])
  np.testing.assert_array_equal(train.line_numbers, np.arange(2, 10))  # Line 1: header.
  dec = _decode(meta, np.asarray(train.ids))
  assert [d[2] for d in dec] == [
    "books",
    "electronics_accessories",  # Longer than 8 bytes: the Python path.
    "café",  # UTF-8.
    "books",
    "MISSING",
    "books",
    "toys",
    "electronics_accessories",
  ]
  prices = [12.5, 199.99, 3, 12.5, 0.5, -2, 1e3, 199.99]
  assert [d[3] for d in dec] == [_bucket(p) for p in prices]
  assert [d[4] for d in dec][:3] == [_bucket(34), "MISSING", _bucket(27)]


def test_csv_scale_transform(tmp_path):
  meta, splits = _prepare(
    tmp_path,
    format="csv",
    train=str(FIXTURES / "clicks.csv"),
    schema=str(FIXTURES / "clicks_schema.yaml"),
    numeric="scale",
  )
  price = meta.field("price")
  age = meta.field("age")
  assert (price.transform, price.size, age.size) == ("scale", 2, 2)
  assert meta.has_values
  tr = splits["train"]
  j = meta.field_names.index("price")
  np.testing.assert_array_equal(tr.ids[:, j], price.offset)  # The value row.
  expected = [math.copysign(math.log1p(abs(x)), x) for x in [12.5, 199.99, 3, 12.5, 0.5, -2]]
  np.testing.assert_allclose(tr.values[:6, j], expected, rtol=1e-6)
  k = meta.field_names.index("age")  # Row 2 has no age: missing row, value 1.
  assert tr.ids[1, k] == age.offset + MISSING and tr.values[1, k] == 1.0
  assert tr.ids[0, k] == age.offset and tr.values[0, k] == pytest.approx(math.log1p(34))


def test_libfm_frappe_pm1_labels(tmp_path):
  path = FIXTURES / "frappe_small.libfm"
  meta, splits = _prepare(tmp_path, format="libfm", train=str(path))
  tr = splits["train"]
  assert meta.field_names == [f"f{k}" for k in range(10)]
  np.testing.assert_array_equal(tr.labels, [1, 0, 1, 0, 1, 0])
  assert not meta.has_values  # All `idx:1`.
  dec = _decode(meta, np.asarray(tr.ids))
  expected = [[p.split(":")[0] for p in line.split()[1:]] for line in path.read_text().splitlines()]
  assert dec == expected


def test_libfm_values_and_01_labels(tmp_path):
  meta, splits = _prepare(tmp_path, format="libfm", train=str(FIXTURES / "movielens_small.libfm"))
  tr = splits["train"]
  assert meta.has_values
  np.testing.assert_array_equal(tr.labels, [0, 1, 1, 0])
  np.testing.assert_allclose(tr.values[:2], [[1, 1, 0.5], [1, 1, 2.25]])


def test_libfm_trailing_spaces_are_stripped(tmp_path):
  src = (FIXTURES / "frappe_small.libfm").read_text()
  spaced = tmp_path / "spaced.libfm"
  spaced.write_text(src.replace("\n", "  \n"))
  _, s1 = _prepare(tmp_path, format="libfm", train=str(FIXTURES / "frappe_small.libfm"))
  _, s2 = _prepare(tmp_path, format="libfm", train=str(spaced))
  np.testing.assert_array_equal(s1["train"].ids, s2["train"].ids)


def test_unlabeled_files_give_nan_labels(tmp_path):
  meta, splits = _prepare(tmp_path, format="criteo", train=str(FIXTURES / "criteo_small.tsv"))
  s, report = encode_file(meta, FIXTURES / "criteo_unlabeled.tsv")
  assert np.isnan(s.labels).all() and report.count == 0
  np.testing.assert_array_equal(s.ids, splits["train"].ids[:3])
  np.testing.assert_array_equal(s.line_numbers, [1, 2, 3])
  rows = (FIXTURES / "criteo_unlabeled.tsv").read_text().splitlines()
  np.testing.assert_array_equal(encode_rows(meta, rows).ids, s.ids)


def test_unlabeled_csv_and_libfm(tmp_path):
  meta, splits = _prepare(
    tmp_path,
    format="csv",
    train=str(FIXTURES / "clicks.csv"),
    schema=str(FIXTURES / "clicks_schema.yaml"),
  )
  lines = (FIXTURES / "clicks.csv").read_text().splitlines()
  nolabel = tmp_path / "score.csv"
  nolabel.write_text("\n".join(",".join(x.split(",")[1:]) for x in lines) + "\n")
  s, _ = encode_file(meta, nolabel)
  assert np.isnan(s.labels).all()
  np.testing.assert_array_equal(s.ids, splits["train"].ids)
  np.testing.assert_array_equal(encode_rows(meta, lines[1:]).ids, s.ids)  # Labeled rows.
  meta, splits = _prepare(tmp_path, format="libfm", train=str(FIXTURES / "frappe_small.libfm"))
  unl = tmp_path / "score.libfm"
  src = (FIXTURES / "frappe_small.libfm").read_text().splitlines()
  unl.write_text("\n".join(x.split(" ", 1)[1] for x in src) + "\n")
  s, _ = encode_file(meta, unl)
  assert np.isnan(s.labels).all()
  np.testing.assert_array_equal(s.ids, splits["train"].ids)


def test_encode_file_reorders_csv_columns_by_name(tmp_path):
  meta, splits = _prepare(
    tmp_path,
    format="csv",
    train=str(FIXTURES / "clicks.csv"),
    schema=str(FIXTURES / "clicks_schema.yaml"),
  )
  rows = [x.split(",") for x in (FIXTURES / "clicks.csv").read_text().splitlines()]
  order = [6, 5, 4, 3, 2, 1, 0]
  shuffled = tmp_path / "shuffled.csv"
  shuffled.write_text("".join(",".join(r[i] for i in order) + "\n" for r in rows))
  s, _ = encode_file(meta, shuffled)
  np.testing.assert_array_equal(s.ids, splits["train"].ids)


# ---------------------------------------------------------------- tokenizer


def _tokens(line: bytes, ntok: int) -> text.Tokens:
  kinds = np.array([9] * (ntok - 1) + [10], np.uint8)
  tokens, bad = text.tokenize(text.Chunk(line, 1), b"\t", kinds, lambda line: "bad")
  assert not bad
  return tokens


def test_parse_numbers_matches_python():
  rng = np.random.default_rng(0)
  ints = np.concatenate(
    [rng.integers(-(10**9), 10**9, 300), rng.integers(-100, 100, 300), [0, -0, 99999999, 10**8]]
  )
  toks = [str(int(x)).encode() for x in ints] + [b"00012", b"-007", b""]
  line = b"\t".join(toks) + b"\n"
  values, bad = token_values.parse_numbers(_tokens(line, len(toks)), list(range(len(toks))), True)
  expected = [float(t) if t else np.nan for t in toks]
  np.testing.assert_array_equal(values[0], expected)
  assert bad == []


def test_parse_decimals_match_python_float():
  rng = np.random.default_rng(1)
  toks = [f"{x:.{d}f}".encode() for x, d in zip(rng.exponential(50, 400), rng.integers(0, 5, 400))]
  toks += [b"-0.25", b".5", b"-.5", b"5.", b"0.1", b"1234567.", b"-123456.7", b"0000.001"]
  line = b"\t".join(toks) + b"\n"
  values, bad = token_values.parse_numbers(_tokens(line, len(toks)), list(range(len(toks))), False)
  assert bad == []
  np.testing.assert_array_equal(values[0], [float(t) for t in toks])  # Bit for bit.


@pytest.mark.parametrize(
  "token, integers_only, ok",
  [
    (b"1.5", True, False),
    (b"1.5", False, True),
    (b"-2e3", False, True),
    (b"+5", True, False),
    (b" 5", True, False),
    (b"1_000", False, False),  # float() would accept it.
    (b"nan", False, False),
    (b"inf", False, False),
    (b"1e999", False, False),  # Overflows to inf.
    (b"-", True, False),
    (b"0x1f", True, False),
    (b"123456789012", True, True),  # Longer than 8 digits: the slow path.
    (b"123456.789", False, True),  # A decimal longer than 8 bytes: the slow path.
    (b".", False, False),
    (b"1.2.3", False, False),
    (b"-.", False, False),
    (b"1,5", False, False),
  ],
)
def test_parse_numbers_grammar(token, integers_only, ok):
  values, bad = token_values.parse_numbers(_tokens(token + b"\t7\n", 2), [0, 1], integers_only)
  assert (bad == []) == ok
  if ok:
    assert values[0, 0] == float(token)
  assert values[0, 1] == 7.0


def test_short_keys_roundtrip_and_long_tokens():
  toks = [b"a", b"68fd1e64", b"", b"caf\xc3\xa9", b"twelve-bytes"]
  tokens = _tokens(b"\t".join(toks) + b"\n", len(toks))
  keys, longs = text.short_keys(tokens, list(range(len(toks))))
  assert longs == [(0, 4)] and keys[0, 4] == text.LONG_KEY and keys[0, 2] == text.MISSING_KEY
  assert text.key_to_bytes(keys[0, :4]) == toks[:4]
  np.testing.assert_array_equal(text.bytes_to_keys(toks[:4]), keys[0, :4])


def test_stable_hash():
  rng = np.random.default_rng(0)
  toks = [bytes(rng.integers(33, 127, rng.integers(1, 9)).astype(np.uint8)) for _ in range(200)]
  scalar = np.array([hashing.hash_token(t) for t in toks], np.uint64)
  np.testing.assert_array_equal(hashing.hash_keys(text.bytes_to_keys(toks)), scalar)
  # Golden values: changing the hash silently re-maps every hashed id of saved models.
  assert hashing.hash_token(b"68fd1e64") == 0xB8A6_DDB5_6038_7917
  assert hashing.hash_token(b"a longer token") == 0x049E_BB4F_0B66_1750


def test_layout_detection(tmp_path):
  p = tmp_path / "x.tsv"
  shutil.copy(FIXTURES / "criteo_unlabeled.tsv", p)
  assert not formats.get("criteo").detect_layout(str(p)).has_labels
  assert formats.get("criteo").detect_layout(str(FIXTURES / "criteo_small.tsv")).has_labels
  lay = formats.get("libfm").detect_layout(str(FIXTURES / "frappe_small.libfm"))
  assert lay.has_labels and len(lay.columns) == 10


def test_csv_header_with_utf8_bom(tmp_path):
  bom = tmp_path / "bom.csv"
  bom.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / "clicks.csv").read_bytes())
  kwargs = {"format": "csv", "schema": str(FIXTURES / "clicks_schema.yaml")}
  _, s1 = _prepare(tmp_path, train=str(FIXTURES / "clicks.csv"), **kwargs)
  _, s2 = _prepare(tmp_path, train=str(bom), **kwargs)
  np.testing.assert_array_equal(s1["train"].ids, s2["train"].ids)


# ---------------------------------------------------------------- the format registry


def test_format_registry_is_config_formats_and_each_implements_the_interface():
  assert tuple(formats.FORMATS) == FORMATS  # gin_jax.config holds the one list of names.
  interface = formats.Format.__abstractmethods__
  assert interface == {
    "fingerprint",
    "detect_layout",
    "rows_chunk",
    "rows_layout",
    "iter_chunks",
    "parse_chunk",
  }
  for name, fmt in formats.FORMATS.items():
    assert formats.get(name) is fmt and fmt.name == name
    assert isinstance(fmt, formats.Format) and not type(fmt).__abstractmethods__
    assert isinstance(fmt.needs_schema, bool)
    for method in interface:  # Same parameters (names, kinds, defaults) as the interface.
      want = inspect.signature(getattr(formats.Format, method)).parameters
      got = inspect.signature(getattr(type(fmt), method)).parameters
      assert [(p.name, p.kind, p.default) for p in got.values()] == [
        (p.name, p.kind, p.default) for p in want.values()
      ], (name, method)
  with pytest.raises(ValueError, match=r"unknown format 'tsv'; expected one of \('criteo'"):
    formats.get("tsv")


def test_encoder_is_built_once_per_dataset_meta(tmp_path):
  meta, _ = _prepare(tmp_path, format="criteo", train=str(FIXTURES / "criteo_small.tsv"))
  encoder = encode.encoder_for(meta)
  assert encode.encoder_for(meta) is encoder  # Scoring calls share the vocabulary tables.
  copy = DatasetMeta.from_json(meta.to_json())
  copy_encoder = weakref.ref(encode.encoder_for(copy))
  assert copy_encoder() is not encoder
  del copy
  gc.collect()
  assert copy_encoder() is None  # Freed with its metadata.
