"""Multi-valued fields in data preparation, scoring and export (issue #22, DESIGN 7).

Hand-written CSV rows: a list column's values become max_values slots of the
ids / values arrays (the LAST max_values values, left-aligned; an empty list is
the field's missing id), with a vocabulary over the values.
"""

import json
import re
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import subprocess_env

from gin_jax import config, runtime, scoring, training
from gin_jax.config import DataConfig
from gin_jax.data import DataError, encode_rows, prepare, synthetic
from gin_jax.data.formats import CsvSchema
from gin_jax.data.meta import MISSING, OOV

SCHEMA = """label: click
categorical: [user]
multi_valued:
  genres: "|"
  history: {separator: " ", max_values: 3, pooling: sum}
"""

REPO = Path(__file__).resolve().parents[1]

ROWS = [
  "1,u1,Comedy|Drama,7 8",
  "0,u2,,1 2 3 4 5",  # empty genres; history truncated to its last 3
  "1,u1,Comedy,",  # empty history
  "0,u3,A-very-long-genre-name|Drama,9",  # a value over 8 bytes
]


def _write(tmp_path, rows=ROWS, schema=SCHEMA):
  (tmp_path / "schema.yaml").write_text(schema)
  path = tmp_path / "train.csv"
  path.write_text("click,user,genres,history\n" + "\n".join(rows) + "\n")
  return path


def _prepare(tmp_path, **kw):
  path = _write(tmp_path)
  cfg = DataConfig(
    format="csv", train=str(path), schema=str(tmp_path / "schema.yaml"), split=(1, 0, 0),
    min_count=1, max_values=4, **kw,
  )  # fmt: skip
  return prepare(cfg, tmp_path / "cache", progress=False)


def test_schema_takes_a_separator_alone_or_the_options():
  s = CsvSchema.from_dict(
    {"label": "y", "multi_valued": {"g": "|", "h": {"separator": " ", "max_values": 5}}}
  )
  assert [(m.name, m.separator, m.max_values, m.pooling) for m in s.multi_valued] == [
    ("g", "|", None, "mean"),
    ("h", " ", 5, "mean"),
  ]
  assert CsvSchema.from_dict(s.to_dict()) == s
  assert "multi_valued" not in CsvSchema.from_dict({"label": "y", "categorical": ["a"]}).to_dict()


@pytest.mark.parametrize(
  "entry,problem",
  [
    ({"separator": ","}, "is the file's column separator"),
    ({"pooling": "max"}, "pooling must be one of"),
    ({"max_values": 0}, "max_values must be an integer from 1 to 1024"),
    ({"max_values": 1000000}, "max_values must be an integer from 1 to 1024, got 1000000"),
    ({"separator": "ab"}, "separator must be one ASCII character"),
    ({"sep": "|"}, "unknown key"),
  ],
)
def test_a_bad_multi_valued_entry_is_named(entry, problem):
  with pytest.raises(DataError, match=f"s.yaml: multi_valued.g: .*{problem}"):
    CsvSchema.from_dict({"label": "y", "multi_valued": {"g": entry}}, "s.yaml")


def test_lists_become_slots_with_mean_and_sum_weights(tmp_path):
  meta, splits = _prepare(tmp_path)
  genres, history = meta.field("genres"), meta.field("history")
  assert (genres.max_values, genres.pooling) == (4, "mean")  # data.max_values
  assert (history.max_values, history.pooling) == (3, "sum")  # its own
  assert meta.num_slots == 1 + 4 + 3 and meta.field_slots == (1, 4, 3)
  assert sorted(meta.vocab["genres"]) == ["A-very-long-genre-name", "Comedy", "Drama"]
  assert meta.truncated_rows == {"genres": 0, "history": 1}
  split = splits["train"]
  order = np.argsort(split.line_numbers)
  ids, values = np.asarray(split.ids)[order], np.asarray(split.values)[order]
  g = lambda t: genres.offset + 2 + meta.vocab["genres"].index(t)
  h = lambda t: history.offset + 2 + meta.vocab["history"].index(t)
  pad = meta.pad_id
  assert pad == meta.num_table_rows
  np.testing.assert_array_equal(
    ids[0, 1:], [g("Comedy"), g("Drama"), pad, pad, h("7"), h("8"), pad]
  )
  np.testing.assert_allclose(values[0, 1:], [0.5, 0.5, 0, 0, 1, 1, 0])
  # An empty list is the field's missing id, weight 1; a long list keeps its last 3.
  np.testing.assert_array_equal(
    ids[1, 1:], [genres.offset + MISSING, pad, pad, pad, h("3"), h("4"), h("5")]
  )
  np.testing.assert_allclose(values[1, 1:], [1, 0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(ids[2, 5:], [history.offset + MISSING, pad, pad])
  assert ids[3, 1] == g("A-very-long-genre-name")


def test_min_count_counts_value_occurrences_and_unseen_values_are_oov(tmp_path):
  path = _write(tmp_path)
  cfg = DataConfig(
    format="csv", train=str(path), schema=str(tmp_path / "schema.yaml"), split=(1, 0, 0),
    min_count=2,
  )  # fmt: skip
  meta, _ = prepare(cfg, tmp_path / "cache2", progress=False)
  assert sorted(meta.vocab["genres"]) == ["Comedy", "Drama"]  # 2 each; the long one once
  split = encode_rows(meta, ["u1,Comedy|Horror,8"])
  genres = meta.field("genres")
  assert split.ids[0, 2] == genres.offset + OOV


@pytest.mark.parametrize(
  "row,reason",
  [
    ("1,u1,Comedy||Drama,7", "genres: an empty value in the list 'Comedy||Drama'"),
    ("1,u1," + "x" * 1100 + ",7", "genres: a value of 1100 bytes (the limit is 1024)"),
  ],
  ids=["empty value", "over the cap"],
)
def test_a_bad_list_names_the_file_line_and_reason(tmp_path, row, reason):
  path = _write(tmp_path, ROWS[:2] + [row])
  cfg = DataConfig(format="csv", train=str(path), schema=str(tmp_path / "schema.yaml"))
  with pytest.raises(DataError, match=re.escape(f"train.csv:4: {reason}")):
    prepare(cfg, tmp_path / "cache", progress=False)
  meta, splits = prepare(
    DataConfig(**{**cfg.__dict__, "bad_rows": "skip", "split": (1, 0, 0), "min_count": 1}),
    tmp_path / "cache_skip",
    progress=False,
  )
  assert len(splits["train"]) == 2 and meta.skipped_rows[str(path)]["count"] == 1


def test_training_scoring_and_export_agree_with_a_multi_valued_field(tmp_path):
  rng = np.random.default_rng(0)
  genres = ["Action", "Comedy", "Drama", "Horror", "Romance", "Documentary-long"]
  rows = []
  for _ in range(2000):
    g = "|".join(rng.choice(genres, rng.integers(0, 4), replace=False))
    u = int(rng.integers(0, 20))
    y = int(("Comedy" in g) != (u % 2 == 0)) if rng.random() < 0.8 else int(rng.integers(0, 2))
    rows.append(f"{y},u{u},{g},{' '.join(str(x) for x in rng.integers(0, 30, 4))}")
  path = _write(tmp_path, rows)
  runtime.init_runtime()
  cfg = config.override(
    config.tiny(),
    {
      "data.format": "csv", "data.train": str(path), "data.schema": str(tmp_path / "schema.yaml"),
      "data.split": "0.6,0.2,0.2", "train.epochs": "2",
    },
  )  # fmt: skip
  report = training.run(cfg, tmp_path / "run", devices=jax.devices()[:1])
  test_auc = report["stages"][report["delivered_stage"]]["test_auc"]  # what scoring uses
  assert test_auc > 0.6  # the planted genre x user interaction is learned
  scorer = scoring.Scorer.from_checkpoint(tmp_path / "run")
  from gin_jax.data import open_prepared

  meta, splits = open_prepared(next((tmp_path / "run" / "data" / "cache").glob("*/")))
  probs = scorer.predict_split(splits["test"])
  from gin_jax import metrics

  assert metrics.auc(splits["test"].labels, probs) == pytest.approx(test_auc, abs=1e-6)
  scoring.export(tmp_path / "run", tmp_path / "export")
  exported = scoring.Scorer.from_export(tmp_path / "export")
  np.testing.assert_allclose(exported.predict_split(splits["test"]), probs, rtol=1e-6, atol=1e-7)
  raw = open(path).read().splitlines()[1:6]
  np.testing.assert_allclose(exported.predict_rows(raw), scorer.predict_rows(raw), rtol=1e-6)


def _parquet(tmp_path, rows=ROWS, history_type="int"):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  cols = [r.split(",") for r in rows]
  as_list = lambda s, sep, cast: [cast(v) for v in s.split(sep)] if s else []
  cast = int if history_type == "int" else str
  table = pa.table({
    "click": [int(c[0]) for c in cols],
    "user": [c[1] for c in cols],
    "genres": pa.array([as_list(c[2], "|", str) for c in cols], pa.list_(pa.string())),
    "history": [as_list(c[3], " ", cast) for c in cols],
  })  # fmt: skip
  path = tmp_path / "train.parquet"
  pq.write_table(table, path, row_group_size=3)
  return path


def test_csv_and_parquet_lists_prepare_byte_identical_splits(tmp_path):
  csv_path = _write(tmp_path)
  pq_path = _parquet(tmp_path)
  kw = {"schema": str(tmp_path / "schema.yaml"), "split": (1, 0, 0), "min_count": 1}
  a_meta, a = prepare(DataConfig(format="csv", train=str(csv_path), **kw), tmp_path / "a")
  b_meta, b = prepare(DataConfig(format="parquet", train=str(pq_path), **kw), tmp_path / "b")
  for name in ("ids", "values", "labels"):
    x, y = np.asarray(getattr(a["train"], name)), np.asarray(getattr(b["train"], name))
    assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name
  assert a_meta.vocab == b_meta.vocab and a_meta.truncated_rows == b_meta.truncated_rows
  assert a_meta.fields == b_meta.fields


def test_a_parquet_column_named_multi_valued_must_be_a_list(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  pq.write_table(pa.table({"click": [1], "user": ["u"], "genres": ["a|b"], "history": [[1]]}),
                 tmp_path / "t.parquet")  # fmt: skip
  (tmp_path / "schema.yaml").write_text(SCHEMA)
  cfg = DataConfig(format="parquet", train=str(tmp_path / "t.parquet"),
                   schema=str(tmp_path / "schema.yaml"))  # fmt: skip
  with pytest.raises(DataError, match="column 'genres' has type string; a multi_valued column"):
    prepare(cfg, tmp_path / "cache", progress=False)


def _list_config(tmp_path, rows=20000):
  schema, planted = synthetic.write_list_csv(tmp_path / "lists.csv", num_rows=rows)
  (tmp_path / "lists.json").write_text(json.dumps(schema))
  cfg = config.override(
    config.tiny(),
    {
      "data.format": "csv", "data.train": str(tmp_path / "lists.csv"),
      "data.schema": str(tmp_path / "lists.json"), "data.min_count": "1",
      "model.embed_dim": "8", "train.batch_size": "256", "train.learning_rate": "1e-2",
    },
  )  # fmt: skip
  return cfg, planted


def test_gin_finds_the_pair_planted_between_a_list_and_a_field(tmp_path):
  """write_list_csv plants (c1, tags) (tags mean-pooled) and (c2, c3); the search
  stage ranks both among the kept 30% of the 21 field pairs (chance: 0.3 each)."""
  runtime.init_runtime()
  cfg, planted = _list_config(tmp_path)
  cfg = config.override(cfg, {"train.epochs": "6"})
  report = training.run(cfg, tmp_path / "run", devices=jax.devices()[:1])
  kept = {tuple(sorted(p)) for p in report["kept_pairs"]}
  assert {tuple(sorted(p)) for p in planted} <= kept, report["kept_pairs"]


_KILL_LISTS = """
import os, signal, sys
from gin_jax import config, runtime, training
runtime.init_runtime()
cfg = config.Config.from_dict(__import__("json").loads(open(sys.argv[3]).read()))
def kill_at(step):
  if step == int(sys.argv[2]):
    os.kill(os.getpid(), signal.SIGKILL)
training.run(cfg, sys.argv[1], on_step=kill_at if sys.argv[2] != "0" else None)
"""


def _history_config(tmp_path, rows):
  """write_history_csv: a history pooled by attention against item_id, sharing its rows."""
  schema, _ = synthetic.write_history_csv(tmp_path / "history.csv", num_rows=rows)
  (tmp_path / "history.json").write_text(json.dumps(schema))
  return config.override(
    config.tiny(),
    {
      "data.format": "csv", "data.train": str(tmp_path / "history.csv"),
      "data.schema": str(tmp_path / "history.json"), "data.min_count": "1",
      "model.embed_dim": "8", "train.batch_size": "256", "train.learning_rate": "1e-2",
    },
  )  # fmt: skip


def test_sigkill_and_resume_with_a_list_field_are_bit_exact(tmp_path):
  """The list: a behaviour history pooled by attention over the candidate's shared rows
  (DESIGN.md section 9), the most state a list field carries (the unit's weights)."""
  cfg = _history_config(tmp_path, rows=3000)
  cfg = config.override(cfg, {"train.checkpoint_every": "10"})  # inside an epoch
  cfg_path = tmp_path / "cfg.json"
  cfg_path.write_text(cfg.to_json())
  env = subprocess_env(devices=None)
  run = lambda wd, step: subprocess.run(
    [sys.executable, "-c", _KILL_LISTS, str(wd), str(step), str(cfg_path)],
    env=env, capture_output=True, text=True, cwd=REPO,
  )  # fmt: skip
  assert run(tmp_path / "full", 0).returncode == 0
  killed = run(tmp_path / "killed", 13)  # 9 steps an epoch, checkpoints every 10
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  resumed = run(tmp_path / "killed", 0)
  assert resumed.returncode == 0 and "resuming from step 10" in resumed.stdout, resumed.stderr
  a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("full", "killed"))
  for stage in ("search", "retrain"):
    for key in ("valid_auc", "valid_logloss", "test_auc", "test_logloss"):
      assert a["stages"][stage][key] == b["stages"][stage][key], (stage, key)


@pytest.mark.parametrize("mode", ["resident", "streamed"])
def test_device_input_carries_the_list_slots(tmp_path, mode):
  """The training split on the devices (resident or streamed) trains exactly as the
  host pipeline does with a multi-valued field."""
  runtime.init_runtime()
  cfg, _ = _list_config(tmp_path, rows=2000)
  losses = {}
  for m in ("off", mode):
    run_cfg = config.override(cfg, {"data.device_resident": m, "train.stages": "single"})
    training.run(run_cfg, tmp_path / m, devices=jax.devices()[:1])
    lines = (tmp_path / m / "metrics.jsonl").read_text().splitlines()
    losses[m] = [json.loads(x)["loss"] for x in lines if '"loss"' in x]
  assert losses["off"] and losses[mode] == losses["off"]


def test_hashing_mode_hashes_list_values_like_single_values(tmp_path):
  meta, splits = _prepare(tmp_path, hash_buckets=64)
  genres, user = meta.field("genres"), meta.field("user")
  assert genres.transform == "hash" and genres.size == 2 + 64
  ids = np.asarray(splits["train"].ids)[np.argsort(splits["train"].line_numbers)]
  from gin_jax.data import hashing, text

  key = text.bytes_to_keys([b"Comedy"])
  want = genres.offset + 2 + int(hashing.hash_keys(key)[0] % np.uint64(64))
  assert ids[0, 1] == want and ids[2, 1] == want  # the same value, the same row
  assert user.offset <= ids[0, 0] < user.offset + user.size


# ------------------------------------------------------------------ memory (issue 33 item 5)


def _wide_lists(tmp_path, rows):
  """A CSV of `rows` rows with a list of 0-6 tags kept up to max_values 1024."""
  path = tmp_path / "wide.csv"
  schema, _ = synthetic.write_list_csv(path, num_rows=rows, seed=0)
  schema["multi_valued"] = {"tags": {"separator": "|", "max_values": 1024}}
  (tmp_path / "wide.json").write_text(json.dumps(schema))
  return DataConfig(format="csv", train=str(path), schema=str(tmp_path / "wide.json"), min_count=1)


def _peak_bytes(fn):
  """fn()'s result and the peak of the memory Python and numpy allocated while it ran."""
  tracemalloc.start()
  try:
    out = fn()
    return out, tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


def test_pass_1_holds_the_values_of_a_list_not_its_padding(tmp_path):
  # It held rows x max_values x 8 B per list column, several times over (1.2 GB for
  # 3,000 rows at max_values 5,000).
  from gin_jax.data import formats, workers

  cfg = _wide_lists(tmp_path, rows=2000)
  fmt = formats.get("csv")
  layout = fmt.detect_layout(cfg.train, CsvSchema.load(cfg.schema).with_max_values(32), True)
  (chunk,) = fmt.iter_chunks(cfg.train, layout)
  counted = tuple(c for c in layout.columns if c.keyed)
  task = workers.ParseTask(fmt, layout, (0.8, 0.1, 0.1), 0, None, True, counted)
  parsed, peak = _peak_bytes(lambda: task((0, chunk)))
  padded = 2000 * 1024 * 8  # one copy of the list's keys padded to max_values: 16 MB
  assert peak < padded / 8, peak
  assert sum(parsed.rows) == 2000 and len(parsed.counts["tags"][0]) == 40


def test_pass_2_writes_padded_lists_a_block_of_rows_at_a_time(tmp_path, monkeypatch):
  # The padded ids and values (3,000 rows x 1,030 slots x 8 B: 25 MB) were built for
  # a whole chunk at once; the prepared files are the same bytes either way.
  from gin_jax.data import text, workers

  cfg = _wide_lists(tmp_path, rows=3000)
  _, whole = prepare(cfg, tmp_path / "a", progress=False, workers=1)
  monkeypatch.setattr(workers, "ENCODE_BLOCK_BYTES", 1 << 20, raising=False)
  monkeypatch.setattr(text, "CHUNK_BYTES", 256 << 10)  # (reading a chunk takes this; 100 KB here)
  (_, blocks), peak = _peak_bytes(lambda: prepare(cfg, tmp_path / "b", progress=False, workers=1))
  assert peak < 3000 * 1030 * 8 / 4, peak
  for name in whole:
    for arr in ("ids", "values", "labels", "line_numbers"):
      np.testing.assert_array_equal(getattr(whole[name], arr), getattr(blocks[name], arr))
