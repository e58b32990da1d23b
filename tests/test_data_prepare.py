"""Preprocessing: vocabularies (train split only, min-count, OOV, missing), hashing,
splits, caching, the memory/disk spill, and scoring-time encoding."""

import gzip
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gin_jax.config import DataConfig
from gin_jax.data import (
  CsvSchema,
  DataError,
  DatasetMeta,
  SyntheticSpec,
  encode_file,
  encode_rows,
  formats,
  hashing,
  prepare,
  text,
  write_criteo_tsv,
)
from gin_jax.data.meta import MISSING, OOV
from gin_jax.data.prepare import assign_splits, split_ratios

FIXTURES = Path(__file__).parent / "fixtures"
prepare_module = sys.modules["gin_jax.data.prepare"]  # (the package's `prepare` is the function)


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
  """A 6000-row synthetic Criteo TSV (small vocabularies, so min-count matters)."""
  path = tmp_path_factory.mktemp("data") / "train.tsv"
  write_criteo_tsv(path, SyntheticSpec(num_rows=6000, max_vocab=300, seed=3))
  return path


def _rows(path: Path) -> list[list[str]]:
  return [line.split("\t") for line in path.read_text().splitlines()]


def _cfg(path, **kwargs):
  return DataConfig(format="criteo", train=str(path), **kwargs)


def test_vocab_from_train_split_only_with_min_count(tmp_path, tsv):
  cfg = _cfg(tsv, split=(0.72, 0.18, 0.1), min_count=3, seed=7)
  meta, splits = prepare(cfg, tmp_path, progress=False)
  rows = _rows(tsv)
  which = assign_splits(np.arange(1, len(rows) + 1), split_ratios(cfg), cfg.seed)
  train_rows = [r for r, s in zip(rows, which) if s == 0]
  for j, name in [(14, "C1"), (20, "C7"), (39, "C26")]:
    counts = Counter(r[j] for r in train_rows if r[j])
    assert set(meta.vocab[name]) == {t for t, c in counts.items() if c >= 3}
    # Most frequent first.
    assert [counts[t] for t in meta.vocab[name]] == sorted(
      (counts[t] for t in meta.vocab[name]), reverse=True
    )
  # Every id of every split decodes to its token, OOV (rare or unseen) or missing.
  for split_name, s in splits.items():
    lines = [rows[i - 1] for i in s.line_numbers]
    f = meta.field("C1")
    j = meta.field_names.index("C1")
    counts = Counter(r[14] for r in train_rows if r[14])
    for r, i in zip(lines, s.ids[:, j].tolist()):
      if not r[14]:
        assert i == f.offset + MISSING
      elif counts[r[14]] >= 3:
        assert meta.vocab["C1"][i - f.offset - 2] == r[14], split_name
      else:
        assert i == f.offset + OOV
  # A token that only appears outside the training split is OOV everywhere.
  outside = {r[14] for r, s in zip(rows, which) if s != 0 and r[14]} - {r[14] for r in train_rows}
  assert not outside & set(meta.vocab["C1"])


def test_splits_by_ratio_are_seeded_and_cover_every_row(tmp_path, tsv):
  meta, splits = prepare(_cfg(tsv, split=(0.72, 0.18, 0.1), seed=1), tmp_path, progress=False)
  n = sum(len(s) for s in splits.values())
  assert n == 6000 and meta.split_rows == {k: len(v) for k, v in splits.items()}
  for name, ratio in zip(("train", "valid", "test"), (0.72, 0.18, 0.1)):
    assert abs(len(splits[name]) / n - ratio) < 0.025
  lines = np.concatenate([s.line_numbers for s in splits.values()])
  np.testing.assert_array_equal(np.sort(lines), np.arange(1, 6001))
  for s in splits.values():  # Each split keeps file order.
    assert (np.diff(s.line_numbers) > 0).all()
  _, again = prepare(_cfg(tsv, split=(0.72, 0.18, 0.1), seed=1), tmp_path / "b", progress=False)
  np.testing.assert_array_equal(again["valid"].line_numbers, splits["valid"].line_numbers)
  _, other = prepare(_cfg(tsv, split=(0.72, 0.18, 0.1), seed=2), tmp_path, progress=False)
  assert not np.array_equal(other["valid"].line_numbers[:50], splits["valid"].line_numbers[:50])
  rate = meta.positive_rate["train"]
  assert rate == pytest.approx(float(np.mean(splits["train"].labels)))


def test_paper_split_has_empty_valid(tmp_path, tsv):
  meta, splits = prepare(_cfg(tsv, split=(0.9, 0.0, 0.1)), tmp_path, progress=False)
  assert len(splits["valid"]) == 0 and meta.positive_rate["valid"] is None
  assert splits["valid"].ids.shape == (0, 39)
  assert abs(len(splits["test"]) / 6000 - 0.1) < 0.02


def test_explicit_valid_and_test_files(tmp_path):
  src = (FIXTURES / "criteo_small.tsv").read_text().splitlines(keepends=True)
  train, valid, test = tmp_path / "tr.tsv", tmp_path / "va.tsv", tmp_path / "te.tsv"
  train.write_text("".join(src[:6]))
  valid.write_text("".join(src[6:8]))
  test.write_text("".join(src[8:]))
  cfg = DataConfig(format="criteo", train=str(train), valid=str(valid), test=str(test), min_count=1)
  meta, splits = prepare(cfg, tmp_path / "c", progress=False)
  assert meta.split_rows == {"train": 6, "valid": 2, "test": 2}
  np.testing.assert_array_equal(splits["valid"].line_numbers, [1, 2])  # Lines of va.tsv.
  # Vocabulary from tr.tsv only: valid/test tokens never seen there are OOV.
  assert set(meta.vocab["C3"]) == {line.split("\t")[16] for line in src[:6]} - {""}
  j = meta.field_names.index("C3")
  for row, i in zip(src[6:8], splits["valid"].ids[:, j]):
    tok = row.split("\t")[16]
    assert i == meta.field("C3").offset + (
      2 + meta.vocab["C3"].index(tok) if tok in meta.vocab["C3"] else OOV
    )
  # With only a valid file, the training file is split train/test by the rescaled ratios.
  only_valid = DataConfig(
    format="criteo", train=str(train), valid=str(valid), split=(0.8, 0.1, 0.1)
  )
  assert split_ratios(only_valid) == pytest.approx((0.8 / 0.9, 0.0, 0.1 / 0.9))


def test_hashing_mode(tmp_path):
  cfg = DataConfig(
    format="criteo", train=str(FIXTURES / "criteo_small.tsv"), hash_buckets=7, split=(1, 0, 0)
  )
  meta, splits = prepare(cfg, tmp_path, progress=False)
  rows = _rows(FIXTURES / "criteo_small.tsv")
  for name in ("C1", "C20", "C26"):
    f = meta.field(name)
    assert (f.transform, f.size) == ("hash", 2 + 7) and name not in meta.vocab
    j = meta.field_names.index(name)
    col = int(name[1:]) + 13
    for r, i in zip(rows, splits["train"].ids[:, j].tolist()):
      want = (
        f.offset + MISSING if not r[col] else f.offset + 2 + hashing.hash_token(r[col].encode()) % 7
      )
      assert i == want
  assert meta.field("I1").transform == "bucketize"  # Numeric fields keep their vocab.
  # Unseen tokens hash too (there is no OOV in hashing mode).
  row = list(rows[0])
  row[14] = "deadbeef"
  s = encode_rows(meta, ["\t".join(row)])
  assert s.ids[0, 13] == meta.field("C1").offset + 2 + hashing.hash_token(b"deadbeef") % 7


def test_long_tokens_in_hashing_mode(tmp_path):
  cfg = DataConfig(
    format="csv",
    train=str(FIXTURES / "clicks.csv"),
    schema=str(FIXTURES / "clicks_schema.yaml"),
    hash_buckets=1000,
    split=(1, 0, 0),
  )
  meta, splits = prepare(cfg, tmp_path, progress=False)
  f = meta.field("category")
  j = meta.field_names.index("category")
  want = f.offset + 2 + hashing.hash_token(b"electronics_accessories") % 1000
  assert splits["train"].ids[1, j] == want


def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
  data = tmp_path / "d.tsv"
  data.write_bytes((FIXTURES / "criteo_small.tsv").read_bytes())
  cfg = _cfg(data, min_count=1)
  meta, _ = prepare(cfg, tmp_path / "c", progress=False)
  calls = []
  criteo = formats.get("criteo")
  real = criteo.parse_chunk
  monkeypatch.setattr(criteo, "parse_chunk", lambda *a: calls.append(1) or real(*a))
  again, _ = prepare(cfg, tmp_path / "c", progress=False)
  assert calls == [] and again == meta
  prepare(_cfg(data, min_count=2), tmp_path / "c", progress=False)  # Other options.
  assert calls
  calls.clear()
  os.utime(data, ns=(1, 1))  # Touched input.
  prepare(cfg, tmp_path / "c", progress=False)
  assert calls
  assert len([d for d in os.listdir(tmp_path / "c") if not d.endswith(".tmp")]) == 3


def test_spill_to_disk_and_threads_give_identical_results(tmp_path, tsv, monkeypatch):
  monkeypatch.setattr(text, "CHUNK_BYTES", 64 << 10)  # ~250 rows per chunk.
  cfg = _cfg(tsv, split=(0.72, 0.18, 0.1))
  base_meta, base = prepare(cfg, tmp_path / "a", progress=False, workers=1)
  for i, kwargs in enumerate([{"spill_memory": 0}, {"workers": 3, "spill_memory": 100_000}]):
    meta, splits = prepare(cfg, tmp_path / str(i), progress=False, **kwargs)
    assert meta.vocab == base_meta.vocab
    for k in base:
      np.testing.assert_array_equal(splits[k].ids, base[k].ids)
      np.testing.assert_array_equal(splits[k].line_numbers, base[k].line_numbers)
  assert not list(Path(tmp_path / "0").rglob("spill.bin"))  # Removed after pass 2.


def test_meta_json_roundtrip(tmp_path, tsv):
  meta, _ = prepare(_cfg(tsv, numeric="scale"), tmp_path, progress=False)
  assert DatasetMeta.from_json(meta.to_json()) == meta
  json.loads(meta.to_json())  # Plain JSON.
  path = meta.save(tmp_path / "saved")
  assert DatasetMeta.load(Path(path).parent) == meta
  assert meta.options["numeric"] == "scale" and meta.options["min_count"] == 2


def test_prepared_layout_on_disk(tmp_path, tsv):
  prepare(_cfg(tsv), tmp_path, progress=False)
  (out,) = [d for d in tmp_path.iterdir() if d.is_dir()]
  files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
  assert files == ["meta.json"] + [
    f"{s}/{a}.npy" for s in ("test", "train", "valid") for a in ("ids", "labels", "line_numbers")
  ]


def test_encode_file_matches_prepared_rows(tmp_path, tsv):
  meta, splits = prepare(_cfg(tsv, split=(0.8, 0.1, 0.1)), tmp_path, progress=False)
  s, report = encode_file(meta, tsv)
  assert report.count == 0 and len(s) == 6000
  for name in ("train", "valid", "test"):
    idx = splits[name].line_numbers - 1
    np.testing.assert_array_equal(s.ids[idx], splits[name].ids)
    np.testing.assert_array_equal(s.labels[idx], splits[name].labels)
  rows = tsv.read_text().splitlines()[:100]
  np.testing.assert_array_equal(encode_rows(meta, rows).ids, s.ids[:100])


def test_synthetic_format_is_prepared(tmp_path):
  cfg = DataConfig(format="synthetic", synthetic_rows=3000, synthetic_vocab=40, min_count=1)
  meta, splits = prepare(cfg, tmp_path, progress=False)
  assert meta.format == "criteo" and len(meta.planted_pairs) == cfg.synthetic_planted
  assert sum(len(s) for s in splits.values()) == 3000
  again, _ = prepare(cfg, tmp_path, progress=False)
  assert again.planted_pairs == meta.planted_pairs


# ------------------------------------------------- rough edges of the real-data path


def _csv_cfg(tmp_path, train, test=None, **kw):
  return DataConfig(
    format="csv",
    train=str(train),
    test=None if test is None else str(test),
    schema=str(kw.pop("schema", FIXTURES / "clicks_schema.yaml")),
    min_count=1,
    split=(0.75, 0.25, 0.0) if test else (0.5, 0.25, 0.25),
    **kw,
  )


def test_csv_test_file_without_header_is_named_plainly(tmp_path):
  lines = (FIXTURES / "clicks.csv").read_text().splitlines(keepends=True)
  test = tmp_path / "test.csv"
  test.write_text("".join(lines[1:4]))  # the rows, without the header line
  with pytest.raises(DataError, match=r"test.csv:1: the file has no header line"):
    prepare(_csv_cfg(tmp_path, FIXTURES / "clicks.csv", test), tmp_path / "c", progress=False)


def test_csv_without_headers_reads_with_schema_columns(tmp_path):
  lines = (FIXTURES / "clicks.csv").read_text().splitlines(keepends=True)
  train, test = tmp_path / "train.csv", tmp_path / "test.csv"
  train.write_text("".join(lines[1:7]))
  test.write_text("".join(lines[7:]))
  schema = tmp_path / "schema.yaml"
  schema.write_text(
    (FIXTURES / "clicks_schema.yaml").read_text()
    + "columns: [click, user, item, category, price, age, note]\n"
  )
  meta, splits = prepare(_csv_cfg(tmp_path, train, test, schema=schema), tmp_path / "c")
  with_header, _ = prepare(_csv_cfg(tmp_path, FIXTURES / "clicks.csv"), tmp_path / "d")
  assert meta.field_names == with_header.field_names
  assert sum(meta.split_rows.values()) == 8  # no line was taken for a header
  np.testing.assert_array_equal(splits["test"].line_numbers, [1, 2])
  bad = tmp_path / "bad.yaml"
  bad.write_text((FIXTURES / "clicks_schema.yaml").read_text() + "columns: [click, user]\n")
  with pytest.raises(DataError, match="'columns' must list every column"):
    CsvSchema.load(bad)


def test_constant_column_is_reported(tmp_path, caplog):
  rows = [f"{i % 2}\tx{i % 7}\tsame\n" for i in range(40)]
  path = tmp_path / "c.csv"
  path.write_text("click\tuser\tconst\n" + "".join(rows))
  schema = tmp_path / "s.yaml"
  schema.write_text('label: click\ncategorical: [user, const]\nseparator: "\\t"\n')
  meta, _ = prepare(_csv_cfg(tmp_path, path, schema=schema), tmp_path / "c", progress=False)
  assert meta.constant_fields == ["const"]
  assert caplog.text.count("['const'] hold the same value in every training row") == 1
  # Issue 36 item 5: said once a process, however many runs open the prepared data (a
  # beat_linear run's and its nested runs, whose caches are links to it): it was said 5 times.
  (tmp_path / "nested").mkdir()
  (tmp_path / "nested" / "c").symlink_to(tmp_path / "c", target_is_directory=True)
  for cache in ("c", "nested/c"):
    again, _ = prepare(_csv_cfg(tmp_path, path, schema=schema), tmp_path / cache, progress=False)
    assert again.constant_fields == ["const"]
  assert caplog.text.count("hold the same value") == 1


def test_split_by_line_gives_valid_and_test_the_newest_rows(tmp_path, tsv, monkeypatch):
  """data.split_by=line: train the oldest rows of the file, valid the next, test the
  newest (a file in time order), the same through gzip, worker processes and a CSV
  header; the cache key of a hash split does not change."""
  cfg = _cfg(tsv, split=(0.8, 0.15, 0.05), split_by="line")
  meta, splits = prepare(cfg, tmp_path / "a", progress=False)
  np.testing.assert_array_equal(splits["train"].line_numbers, np.arange(1, 4801))
  np.testing.assert_array_equal(splits["valid"].line_numbers, np.arange(4801, 5701))
  np.testing.assert_array_equal(splits["test"].line_numbers, np.arange(5701, 6001))
  assert meta.options["split_by"] == "line"
  prepare(_cfg(tsv, split=(0.8, 0.15, 0.05)), tmp_path / "hash", progress=False)
  assert "split_by" not in _options_of(tmp_path / "hash")
  gz = tmp_path / "train.tsv.gz"
  gz.write_bytes(gzip.compress(tsv.read_bytes()))
  monkeypatch.setattr(text, "CHUNK_BYTES", 64 << 10)  # many chunks, in worker processes
  monkeypatch.setattr(prepare_module, "PROCESS_MIN_BYTES", 0)
  monkeypatch.setattr(prepare_module, "THREADS_UP_TO", 1)
  cfg_gz = _cfg(gz, split=(0.8, 0.15, 0.05), split_by="line", prepare_workers=2)
  meta_gz, again = prepare(cfg_gz, tmp_path / "b", progress=False)
  for name in splits:
    np.testing.assert_array_equal(again[name].ids, splits[name].ids)
  assert meta_gz.vocab == meta.vocab  # counted over the same (oldest) training rows
  csv = tmp_path / "clicks.csv"
  csv.write_text("click,user\n" + "".join(f"{i % 2},u{i % 7}\n" for i in range(10)))
  schema = tmp_path / "schema.yaml"
  schema.write_text("label: click\ncategorical: [user]\n")
  csv_cfg = DataConfig(format="csv", train=str(csv), schema=str(schema), split=(0.6, 0.2, 0.2),
                       split_by="line", min_count=1)  # fmt: skip
  _, parts = prepare(csv_cfg, tmp_path / "c", progress=False)
  assert [list(parts[s].line_numbers) for s in ("train", "valid", "test")] == [
    [2, 3, 4, 5, 6, 7], [8, 9], [10, 11]]  # fmt: skip
  with pytest.raises(ValueError, match="split_by must be one of"):
    _cfg(tsv, split_by="time")


def _options_of(cache_dir):
  """The options of the one dataset prepared (by hash) in cache_dir, if any."""
  metas = list(Path(cache_dir).glob("*/meta.json"))
  return json.loads(metas[0].read_text())["options"] if metas else {}
