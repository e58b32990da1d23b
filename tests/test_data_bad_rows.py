"""Bad input: every case stops with `file:line: reason` under --bad-rows=error and is
skipped, counted and reported under --bad-rows=skip. Nothing is coerced or dropped
silently."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from gin_jax.config import DataConfig
from gin_jax.data import DataError, encode_file, encode_rows, prepare
from gin_jax.data.errors import MAX_EXAMPLES
from gin_jax.data.meta import MISSING, OOV

FIXTURES = Path(__file__).parent / "fixtures"
CRITEO = (FIXTURES / "criteo_small.tsv").read_bytes().splitlines(keepends=True)
FRAPPE = (FIXTURES / "frappe_small.libfm").read_bytes().splitlines(keepends=True)
CSV = (FIXTURES / "clicks.csv").read_bytes().splitlines(keepends=True)
SCHEMA = str(FIXTURES / "clicks_schema.yaml")


def _cfg(fmt, path, bad_rows="error", **kwargs):
  schema = SCHEMA if fmt == "csv" else None
  return DataConfig(
    format=fmt,
    train=str(path),
    schema=schema,
    bad_rows=bad_rows,
    split=(1.0, 0.0, 0.0),
    min_count=1,
    **kwargs,
  )


def _with_line(lines: list[bytes], at: int, line: bytes) -> bytes:
  """The fixture with `line` inserted as (1-based) line `at`."""
  return b"".join(lines[: at - 1] + [line] + lines[at - 1 :])


def _criteo_line(label=b"0", ints=None, cats=None) -> bytes:
  ints = ints if ints is not None else [b"1"] * 13
  cats = cats if cats is not None else [b"68fd1e64"] * 26
  return b"\t".join([label, *ints, *cats]) + b"\n"


# (format, fixture lines, inserted line, line number, expected reason)
CASES = {
  "criteo_too_few_fields": (
    "criteo",
    CRITEO,
    b"\t".join(_criteo_line().split(b"\t")[:39]) + b"\n",
    4,
    "expected 40 tab-separated fields, got 39",
  ),
  "criteo_too_many_fields": (
    "criteo",
    CRITEO,
    _criteo_line()[:-1] + b"\textra\n",
    2,
    "expected 40 tab-separated fields, got 41",
  ),
  "criteo_non_numeric_integer": (
    "criteo",
    CRITEO,
    _criteo_line(ints=[b"1", b"2", b"abc"] + [b"1"] * 10),
    3,
    "I3: 'abc' is not an integer",
  ),
  "criteo_float_in_integer_field": (
    "criteo",
    CRITEO,
    _criteo_line(ints=[b"1.5"] + [b"1"] * 12),
    5,
    "I1: '1.5' is not an integer",
  ),
  "criteo_label_not_01": ("criteo", CRITEO, _criteo_line(label=b"2"), 1, "label '2' not in {0, 1}"),
  "criteo_label_minus_one": (
    "criteo",
    CRITEO,
    _criteo_line(label=b"-1"),
    6,
    "label '-1' not in {0, 1}",
  ),
  "criteo_empty_line": ("criteo", CRITEO, b"\n", 7, "empty line"),
  "criteo_non_utf8_category": (
    "criteo",
    CRITEO,
    _criteo_line(cats=[b"68fd\xff\xfe64"] + [b"68fd1e64"] * 25),
    3,
    "invalid UTF-8 byte 0xff at column",
  ),
  "criteo_control_character": (
    "criteo",
    CRITEO,
    _criteo_line(cats=[b"68fd\x011e6"] + [b"68fd1e64"] * 25),
    2,
    "control character 0x01 at column",
  ),
  "libfm_label_not_pm1": (
    "libfm",
    FRAPPE,
    FRAPPE[0].replace(b"1 ", b"2 ", 1),
    2,
    "label '2' not in {0, 1} or {-1, +1}",
  ),
  "libfm_missing_colon": (
    "libfm",
    FRAPPE,
    FRAPPE[0].replace(b"451:1", b"451-1"),
    3,
    "expected a label and 10 'idx:val' field(s) separated by single spaces",
  ),
  "libfm_wrong_field_count": (
    "libfm",
    FRAPPE,
    b" ".join(FRAPPE[0].split(b" ")[:5]) + b"\n",
    2,
    "expected a label and 10 'idx:val' field(s)",
  ),
  "libfm_bad_first_line": (  # The layout comes from the most common field count.
    "libfm",
    FRAPPE,
    b"1 3:1 4:1\n",
    1,
    "expected a label and 10 'idx:val' field(s)",
  ),
  "libfm_bad_value": ("libfm", FRAPPE, FRAPPE[0].replace(b"451:1", b"451:x"), 4, "f0: value 'x'"),
  "libfm_empty_line": ("libfm", FRAPPE, b"\n", 3, "empty line"),
  # Issue 11: an index must be an integer in [0, 2^31 - 1), not any token.
  "libfm_negative_index": (
    "libfm",
    FRAPPE,
    FRAPPE[0].replace(b"451:1", b"-451:1"),
    2,
    "f0: index '-451' is not in [0, 2147483647)",
  ),
  "libfm_non_integer_index": (
    "libfm",
    FRAPPE,
    FRAPPE[0].replace(b"4149:1", b"41.5:1"),
    3,
    "f1: index '41.5' is not an integer",
  ),
  "libfm_huge_index": (
    "libfm",
    FRAPPE,
    FRAPPE[0].replace(b"451:1", b"99999999999999999999:1"),
    4,
    "f0: index '99999999999999999999' is not in [0, 2147483647)",
  ),
  # Issue 11: a 10 MB category would enter the vocabulary and every checkpoint.
  "criteo_category_over_1_kib": (
    "criteo",
    CRITEO,
    _criteo_line(cats=[b"68fd1e64"] * 7 + [b"x" * (10 << 20)] + [b"68fd1e64"] * 18),
    2,
    "C8: a category of 10485760 bytes (the limit is 1024)",
  ),
  "csv_category_over_1_kib": ("csv", CSV, b"1,u1," + b"i" * 1025 + b",books,1,3,\n", 3, "item: a"),
  "csv_wrong_field_count": ("csv", CSV, b"1,u1,i10,books\n", 3, "expected 7 comma-separated"),
  "csv_non_numeric": ("csv", CSV, b"1,u1,i10,books,cheap,3,\n", 4, "price: 'cheap' is not a"),
  "csv_label": ("csv", CSV, b"yes,u1,i10,books,1,3,\n", 2, "label 'yes' not in {0, 1}"),
  "csv_quoted": ("csv", CSV, b'1,u1,i10,"books, used",1,3,\n', 5, "quoted fields are not"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_row_error_and_skip(tmp_path, case):
  fmt, lines, bad, at, reason = CASES[case]
  path = tmp_path / f"bad.{fmt}"
  path.write_bytes(_with_line(lines, at, bad))
  with pytest.raises(DataError) as e:
    prepare(_cfg(fmt, path), tmp_path / "c1", progress=False)
  assert str(e.value).startswith(f"{path}:{at}: "), str(e.value)
  assert reason in str(e.value)

  meta, splits = prepare(_cfg(fmt, path, "skip"), tmp_path / "c2", progress=False)
  skipped = meta.skipped_rows[str(path)]
  assert skipped["count"] == 1, skipped
  assert skipped["examples"][0].startswith(f"{path}:{at}: ") and reason in skipped["examples"][0]
  good = len(lines) - (1 if fmt == "csv" else 0)
  assert len(splits["train"]) == good
  assert at not in splits["train"].line_numbers.tolist()
  # The same file encoded for scoring: same verdict, same rows kept.
  s, report = encode_file(meta, path, bad_rows="skip")
  assert report.count == 1 and report.line_numbers == [at]
  np.testing.assert_array_equal(s.ids, splits["train"].ids)
  with pytest.raises(DataError, match=f"{path}:{at}: "):
    encode_file(meta, path)


def test_skip_reports_count_and_first_examples(tmp_path):
  lines = list(CRITEO)
  for at in (2, 4, 6, 8, 10, 12, 14):
    lines.insert(at - 1, b"\n")
  path = tmp_path / "many_bad.tsv"
  path.write_bytes(b"".join(lines))
  meta, splits = prepare(_cfg("criteo", path, "skip"), tmp_path / "c", progress=False)
  report = meta.skipped_rows[str(path)]
  assert report["count"] == 7
  assert report["examples"] == [f"{path}:{at}: empty line" for at in (2, 4, 6, 8, 10)]
  assert len(report["examples"]) == MAX_EXAMPLES
  assert len(splits["train"]) == 10
  s, rep = encode_file(meta, path, bad_rows="skip")
  assert rep.line_numbers == [2, 4, 6, 8, 10, 12, 14]
  assert "skipped 7 bad row(s)" in rep.summary()


def test_bad_rows_across_chunks_keep_line_numbers(tmp_path, monkeypatch):
  from gin_jax.data import text

  monkeypatch.setattr(text, "CHUNK_BYTES", 300)  # Many chunks, bad rows in several.
  assert len(list(text.iter_chunks(FIXTURES / "criteo_small.tsv"))) > 5
  lines = list(CRITEO) * 5
  lines.insert(17, b"x\n")
  lines.insert(41, b"\n")
  path = tmp_path / "chunks.tsv"
  path.write_bytes(b"".join(lines))
  with pytest.raises(DataError, match=f"{path}:18: expected 40"):
    prepare(_cfg("criteo", path), tmp_path / "c1", progress=False)
  meta, splits = prepare(_cfg("criteo", path, "skip"), tmp_path / "c2", progress=False)
  assert meta.skipped_rows[str(path)]["count"] == 2
  kept = splits["train"].line_numbers.tolist()
  assert kept == [i for i in range(1, 53) if i not in (18, 42)]


def test_line_too_long(tmp_path, monkeypatch):
  from gin_jax.data import text

  monkeypatch.setattr(text, "CHUNK_BYTES", 1000)
  monkeypatch.setattr(text, "MAX_LINE_BYTES", 5000)
  path = tmp_path / "noline.tsv"
  path.write_bytes(CRITEO[0] + b"x" * 20000)
  with pytest.raises(DataError, match=f"{path}:2: line longer than"):
    prepare(_cfg("criteo", path), tmp_path / "c", progress=False)


def test_empty_file(tmp_path):
  for name, data in [("empty.tsv", b""), ("empty.gz", gzip.compress(b""))]:
    path = tmp_path / name
    path.write_bytes(data)
    for mode in ("error", "skip"):
      with pytest.raises(DataError, match=f"{path}: empty file"):
        prepare(_cfg("criteo", path, mode), tmp_path / "c", progress=False)


def test_header_only_csv(tmp_path):
  path = tmp_path / "header.csv"
  path.write_bytes(CSV[0])
  with pytest.raises(DataError, match="no rows for the training split"):
    prepare(_cfg("csv", path), tmp_path / "c", progress=False)


def test_all_rows_bad_in_skip_mode(tmp_path):
  path = tmp_path / "allbad.tsv"
  path.write_bytes(b"\n\n\n")
  with pytest.raises(DataError, match="no rows for the training split"):
    prepare(_cfg("criteo", path, "skip"), tmp_path / "c", progress=False)


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_truncated_gzip(tmp_path, mode):
  full = gzip.compress(b"".join(CRITEO * 50))
  path = tmp_path / "cut.tsv.gz"
  path.write_bytes(full[: len(full) // 2])
  with pytest.raises(DataError, match=r"cut\.tsv\.gz:\d+: gzip data ends early \(truncated"):
    prepare(_cfg("criteo", path, mode), tmp_path / "c", progress=False)


def test_corrupt_gzip(tmp_path):
  full = bytearray(gzip.compress(b"".join(CRITEO * 50)))
  full[len(full) // 2] ^= 0xFF
  path = tmp_path / "corrupt.gz"
  path.write_bytes(bytes(full))
  with pytest.raises(DataError, match="corrupt gzip data"):
    prepare(_cfg("criteo", path), tmp_path / "c", progress=False)


def test_schema_errors(tmp_path):
  data = tmp_path / "d.csv"
  data.write_bytes(b"".join(CSV))
  cases = {
    "label: click\ncategorical: [user, zzz]\nignore: [item, category, price, age, note]\n": (
      r"schema column\(s\) \['zzz'\] not in the header"
    ),
    "label: click\ncategorical: [user]\nnumeric: [price]\n": (
      r"column\(s\) \['item', 'category', 'age', 'note'\] not named in the schema"
    ),
    "label: click\ncategorical: [user]\nnumerics: [price]\n": r"unknown schema key\(s\)",
    "categorical: [user]\n": "must name the label column",
    "label: click\ncategorical: [user, user]\n": r"named more than once",
    "label: click\ncategorical: [user]\nseparator: ';;'\n": "separator must be one ASCII character",
    "label: [click\n": "cannot parse schema",
  }
  for text, match in cases.items():
    schema = tmp_path / "s.yaml"
    schema.write_text(text)
    cfg = DataConfig(format="csv", train=str(data), schema=str(schema))
    with pytest.raises(DataError, match=match):
      prepare(cfg, tmp_path / "c", progress=False)
  with pytest.raises(DataError, match="needs a schema"):
    prepare(DataConfig(format="csv", train=str(data)), tmp_path / "c", progress=False)


def test_csv_label_column_missing_from_header_at_training(tmp_path):
  data = tmp_path / "d.csv"
  data.write_bytes(b"".join(line.split(b",", 1)[1] for line in CSV))
  with pytest.raises(DataError, match="label column 'click' not in the header"):
    prepare(_cfg("csv", data), tmp_path / "c", progress=False)


def test_unseen_and_missing_categories_at_scoring(tmp_path):
  meta, splits = prepare(
    _cfg("criteo", FIXTURES / "criteo_small.tsv"), tmp_path / "c", progress=False
  )
  row = CRITEO[0].rstrip(b"\n").split(b"\t")
  row[14] = b"deadbeef"  # C1 never seen in training.
  row[15] = b""  # C2 missing.
  row[1] = b"123456789"  # I1: a bucket never seen in training.
  s = encode_rows(meta, [b"\t".join(row).decode()])
  c1, c2, i1 = meta.field("C1"), meta.field("C2"), meta.field("I1")
  assert s.ids[0, meta.field_names.index("C1")] == c1.offset + OOV
  assert s.ids[0, meta.field_names.index("C2")] == c2.offset + MISSING
  assert s.ids[0, meta.field_names.index("I1")] == i1.offset + OOV
  same = [j for j in range(39) if j not in (0, 13, 14)]
  np.testing.assert_array_equal(s.ids[0, same], splits["train"].ids[0, same])


def test_encode_rows_errors(tmp_path):
  meta, _ = prepare(_cfg("criteo", FIXTURES / "criteo_small.tsv"), tmp_path / "c", progress=False)
  good = CRITEO[0].decode().rstrip("\n")
  with pytest.raises(DataError, match=r"<rows>:2: expected 40 tab-separated fields, got 2"):
    encode_rows(meta, [good, "1\tx"])
  s = encode_rows(meta, [good, "1\tx", good], bad_rows="skip")
  np.testing.assert_array_equal(s.line_numbers, [1, 3])
  with pytest.raises(DataError, match="line break"):
    encode_rows(meta, [good + "\n" + good])
  # Non-UTF-8 bytes that reached a str via surrogateescape are still a bad row.
  bad = (CRITEO[0].rstrip(b"\n").replace(b"68fd1e64", b"68fd\xff64", 1)).decode(
    "utf-8", "surrogateescape"
  )
  with pytest.raises(DataError, match="invalid UTF-8"):
    encode_rows(meta, [bad])


def test_scoring_file_with_other_columns_is_rejected(tmp_path):
  meta, _ = prepare(_cfg("criteo", FIXTURES / "criteo_small.tsv"), tmp_path / "c", progress=False)
  with pytest.raises(DataError, match="columns do not match"):
    encode_file(meta, FIXTURES / "frappe_small.libfm", fmt="libfm")


@pytest.mark.parametrize(
  "name, fmt, message",
  [
    ("clicks.csv", "criteo", r"clicks\.csv: not Criteo TSV, whose rows have 40 tab-separated "
     r"fields \(label, I1\.\.I13, C1\.\.C26\), or 39 without the label; its first line has 1, "
     r"and it looks like comma-separated with a header \(click, user, item, category, \.\.\.; "
     r"7 columns\): try --format csv --schema FILE$"),
    ("frappe_small.libfm", "criteo", r"it looks like libfm rows \(label idx:val \.\.\.\): "
     r"try --format libfm$"),
    ("clicks.csv", "libfm", r"clicks\.csv: no 'idx:val' fields in the first lines \(libfm rows "
     r"are `label idx:val idx:val \.\.\.`\); it looks like comma-separated with a header"),
    ("criteo_small.tsv", "libfm", r"it looks like Criteo TSV: try --format criteo$"),
    ("criteo_small.tsv", "csv", r"criteo_small\.tsv:1: the header has no ',' \(the schema's "
     r"separator\), so it is one column; it looks like Criteo TSV: try --format criteo$"),
  ],
)  # fmt: skip
def test_a_file_of_another_format_is_named_with_the_format_that_fits(tmp_path, name, fmt, message):
  """Issue 36 item 5: a CSV file read as Criteo said `expected 40 tab-separated fields, got 1`
  (and 39-field files are read too)."""
  with pytest.raises(DataError, match=message):
    prepare(_cfg(fmt, FIXTURES / name), tmp_path / "c", progress=False)


def test_a_tab_separated_csv_under_a_comma_schema_is_told_its_separator(tmp_path):
  path = tmp_path / "t.csv"
  path.write_bytes(b"".join(line.replace(b",", b"\t") for line in CSV))
  with pytest.raises(DataError, match=r"tab-separated with a header \(click, user, item, category"
                     r", \.\.\.; 7 columns\): try --format csv --schema FILE \(the schema's "
                     r"separator: '\\t'\)$"):  # fmt: skip
    prepare(_cfg("csv", path), tmp_path / "c", progress=False)
