"""Preparation on every core (issue 24, part 5): worker processes give the same bytes
as one process, in every format; errors and skips name the same file:line; an input
of several files (a directory or a glob) is one dataset."""

import hashlib
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from gin_jax.config import DataConfig
from gin_jax.data import DataError, SyntheticSpec, prepare, text, workers, write_criteo_tsv

PREPARE = sys.modules["gin_jax.data.prepare"]  # (the package's `prepare` is the function)

SCHEMA = """label: click
categorical: [user, item]
numeric: [price]
multi_valued:
  tags: "|"
"""


@pytest.fixture
def processes(monkeypatch):
  """Worker processes for these small inputs and any number of workers (up to 8, as
  if there were 8 cores), in chunks of ~64 KiB (many per file)."""
  monkeypatch.setattr(PREPARE, "PROCESS_MIN_BYTES", 0)
  monkeypatch.setattr(PREPARE, "THREADS_UP_TO", 1)
  monkeypatch.setattr(text, "CHUNK_BYTES", 64 << 10)
  monkeypatch.setattr(workers, "available_cores", lambda: 8)


def _digest(directory: Path) -> dict[str, str]:
  """Every file of a prepared dataset, by its path, with the hash of its bytes."""
  return {
    str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(directory.rglob("*"))
    if p.is_file()
  }


def _prepared(cfg: DataConfig, cache: Path, **kwargs) -> dict[str, str]:
  prepare(cfg, cache, progress=False, **kwargs)
  (out,) = [d for d in cache.iterdir() if d.is_dir()]
  assert not list(out.rglob("*.bin")), "part files are removed after pass 2"
  return _digest(out)


def _csv(path: Path, rows: int, seed: int, bad_every: int = 0) -> None:
  rng = np.random.default_rng(seed)
  lines = ["click,user,item,price,tags"]
  for i in range(rows):
    tags = "|".join(f"t{t}" for t in rng.integers(0, 40, rng.integers(0, 5)))
    price = "" if i % 7 == 0 else f"{rng.random() * 100:.2f}"
    lines.append(
      f"{rng.integers(0, 2)},u{rng.zipf(1.5) % 500},i{rng.integers(0, 80)},{price},{tags}"
    )
    if bad_every and i % bad_every == bad_every - 1:
      lines.append("2,u1,i1,1.0,t1")  # a bad label
  path.write_text("\n".join(lines) + "\n")


def _libfm(path: Path, rows: int, seed: int) -> None:
  rng = np.random.default_rng(seed)
  lines = []
  for _ in range(rows):
    feats = " ".join(f"{f * 100 + int(rng.integers(0, 60))}:{rng.random():.3f}" for f in range(6))
    lines.append(f"{rng.choice(['-1', '1'])} {feats}")
  path.write_text("\n".join(lines) + "\n")


def _formats(tmp_path: Path) -> dict[str, DataConfig]:
  tsv = tmp_path / "train.tsv"
  write_criteo_tsv(tsv, SyntheticSpec(num_rows=3000, max_vocab=300, seed=3))
  csv = tmp_path / "train.csv"
  _csv(csv, 6000, 0)
  (tmp_path / "schema.yaml").write_text(SCHEMA)
  libfm = tmp_path / "train.libfm"
  _libfm(libfm, 6000, 1)
  schema = str(tmp_path / "schema.yaml")
  return {
    "criteo": DataConfig(format="criteo", train=str(tsv), split=(0.7, 0.2, 0.1)),
    "criteo scale": DataConfig(format="criteo", train=str(tsv), numeric="scale"),
    "criteo hashing": DataConfig(format="criteo", train=str(tsv), hash_buckets=1000),
    "csv lists": DataConfig(format="csv", train=str(csv), schema=schema, min_count=1),
    "libfm values": DataConfig(format="libfm", train=str(libfm), split=(0.8, 0.2, 0.0)),
  }


def test_worker_processes_prepare_the_same_bytes_as_one_process(tmp_path, processes):
  for name, cfg in _formats(tmp_path).items():
    one = _prepared(cfg, tmp_path / name / "1", workers=1)
    for n in (2, 3):
      assert _prepared(cfg, tmp_path / name / str(n), workers=n) == one, (name, n)
    # Parsed chunks past the workers' memory budget go through part files.
    for budget in (0, 300_000):
      again = _prepared(cfg, tmp_path / name / f"b{budget}", workers=2, spill_memory=budget)
      assert again == one, (name, budget)


def test_parquet_input_with_worker_processes_gives_the_same_bytes(tmp_path, processes):
  pytest.importorskip("pyarrow")
  import pyarrow as pa
  import pyarrow.parquet as pq

  rng = np.random.default_rng(0)
  n = 20_000
  table = pa.table({
    "click": rng.integers(0, 2, n),
    "user": [f"u{x}" for x in rng.zipf(1.5, n) % 700],
    "item": rng.integers(0, 90, n),
    "price": np.where(rng.random(n) < 0.1, np.nan, rng.random(n)),
  })  # fmt: skip
  pq.write_table(table, tmp_path / "train.parquet", row_group_size=3000)
  (tmp_path / "schema.yaml").write_text(
    "label: click\ncategorical: [user, item]\nnumeric: [price]\n"
  )
  cfg = DataConfig(
    format="parquet", train=str(tmp_path / "train.parquet"), schema=str(tmp_path / "schema.yaml")
  )
  one = _prepared(cfg, tmp_path / "1", workers=1)
  assert _prepared(cfg, tmp_path / "2", workers=2) == one


def test_a_bad_row_is_named_and_skipped_alike_with_workers(tmp_path, processes):
  csv = tmp_path / "bad.csv"
  _csv(csv, 5000, 2, bad_every=997)
  (tmp_path / "schema.yaml").write_text(SCHEMA)
  cfg = DataConfig(format="csv", train=str(csv), schema=str(tmp_path / "schema.yaml"))
  errors = []
  for n in (1, 2):
    with pytest.raises(DataError) as e:
      prepare(cfg, tmp_path / f"e{n}", progress=False, workers=n)
    errors.append(str(e.value))
  assert errors[0] == errors[1] and errors[0].startswith(f"{csv}:999: label")
  skip = DataConfig(
    format="csv", train=str(csv), schema=str(tmp_path / "schema.yaml"), bad_rows="skip"
  )
  one = _prepared(skip, tmp_path / "s1", workers=1)
  assert _prepared(skip, tmp_path / "s2", workers=2) == one
  meta, _ = prepare(skip, tmp_path / "s2", progress=False, workers=2)
  assert meta.skipped_rows[str(csv)]["count"] == 5


def test_a_worker_that_dies_is_an_error_not_a_hang():
  with workers.ProcessPool(2) as pool:
    assert pool.submit(sum, [1, 2, 3]).result() == 6
    dead = pool.submit(os._exit, 3)
    with pytest.raises(workers.WorkerDied, match="exit status 3"):
      dead.result(timeout=60)
    # The other child still works; the dead one's later tasks fail fast.
    results = [pool.submit(abs, -k) for k in range(4)]
    done = [f for f in results if f.exception(timeout=60) is None]
    assert done and all(f.result() == abs(-results.index(f)) for f in done)


def test_an_error_raised_in_a_worker_reaches_the_caller():
  with workers.ProcessPool(1) as pool:
    with pytest.raises(ValueError, match="invalid literal"):
      pool.submit(int, "x").result(timeout=60)


def test_available_cores_follow_affinity_and_the_cgroup_quota(monkeypatch, tmp_path):
  monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 5})
  monkeypatch.setattr(workers, "_cgroup_quota", lambda: None)
  assert workers.available_cores() == 4
  assert PREPARE.default_workers() == 4
  monkeypatch.setattr(workers, "_cgroup_quota", lambda: 2)
  assert workers.available_cores() == 2


# ------------------------------------------------------------------ several files


def _split_file(src: Path, directory: Path, parts: int, header: bool = False) -> list[Path]:
  lines = src.read_text().splitlines(keepends=True)
  head, body = (lines[:1], lines[1:]) if header else ([], lines)
  directory.mkdir()
  size = -(-len(body) // parts)
  out = []
  for k in range(parts):
    path = directory / f"day{k:02d}.txt"
    path.write_text("".join(head + body[k * size : (k + 1) * size]))
    out.append(path)
  return out


def _arrays(splits) -> dict:
  return {(s, k): getattr(splits[s], k) for s in splits for k in ("ids", "labels")}


@pytest.mark.parametrize("workers_n", [1, 2])
def test_a_directory_or_glob_of_day_files_is_one_dataset(tmp_path, monkeypatch, workers_n):
  if workers_n > 1:
    monkeypatch.setattr(PREPARE, "PROCESS_MIN_BYTES", 0)
    monkeypatch.setattr(PREPARE, "THREADS_UP_TO", 1)
  whole = tmp_path / "all.tsv"
  write_criteo_tsv(whole, SyntheticSpec(num_rows=3000, max_vocab=300, seed=5))
  days = tmp_path / "days"
  _split_file(whole, days, 3)
  (days / "_SUCCESS").write_text("")  # a marker file, not data
  (days / "day03.txt").write_text("")  # an hour without traffic
  ref_meta, ref = prepare(
    DataConfig(format="criteo", train=str(whole)), tmp_path / "a", progress=False
  )
  for i, train in enumerate([days, days / "day*.txt"]):
    cfg = DataConfig(format="criteo", train=str(train))
    meta, splits = prepare(cfg, tmp_path / f"c{i}", progress=False, workers=workers_n)
    assert meta.vocab == ref_meta.vocab and meta.split_rows == ref_meta.split_rows
    for key, arr in _arrays(splits).items():
      np.testing.assert_array_equal(arr, _arrays(ref)[key])
    np.testing.assert_array_equal(splits["train"].line_numbers, ref["train"].line_numbers)
    assert [p[0] for p in meta.inputs[0]["parts"]] == [
      str(days / n) for n in ("day00.txt", "day01.txt", "day02.txt", "day03.txt")
    ]


def test_a_new_day_file_in_the_directory_prepares_again(tmp_path):
  days = tmp_path / "days"
  whole = tmp_path / "all.tsv"
  write_criteo_tsv(whole, SyntheticSpec(num_rows=900, max_vocab=100, seed=6))
  _split_file(whole, days, 2)
  cfg = DataConfig(format="criteo", train=str(days))
  meta, _ = prepare(cfg, tmp_path / "c", progress=False)
  (days / "day09.txt").write_text((days / "day00.txt").read_text())
  grown, _ = prepare(cfg, tmp_path / "c", progress=False)
  assert sum(grown.split_rows.values()) == sum(meta.split_rows.values()) + 450


def test_bad_rows_in_a_part_are_named_by_the_part_and_its_own_line(tmp_path):
  csv = tmp_path / "all.csv"
  _csv(csv, 600, 3)
  (tmp_path / "schema.yaml").write_text(SCHEMA)
  parts = _split_file(csv, tmp_path / "parts", 3, header=True)
  lines = parts[1].read_text().splitlines(keepends=True)
  lines[5] = "x,u1,i1,1.0,t1\n"  # line 6 of the second part
  parts[1].write_text("".join(lines))
  kw = {"format": "csv", "schema": str(tmp_path / "schema.yaml"), "train": str(tmp_path / "parts")}
  with pytest.raises(DataError, match=rf"^{parts[1]}:6: label 'x'"):
    prepare(DataConfig(**kw), tmp_path / "c", progress=False)
  meta, _ = prepare(DataConfig(**kw, bad_rows="skip"), tmp_path / "c", progress=False)
  (example,) = meta.skipped_rows[kw["train"]]["examples"]
  assert example.startswith(f"{parts[1]}:6: label 'x'")


def test_a_part_with_another_header_is_refused(tmp_path):
  csv = tmp_path / "all.csv"
  _csv(csv, 300, 4)
  (tmp_path / "schema.yaml").write_text(SCHEMA)
  parts = _split_file(csv, tmp_path / "parts", 2, header=True)
  body = parts[1].read_text().splitlines(keepends=True)[1:]
  parts[1].write_text("click,item,user,price,tags\n" + "".join(body))
  cfg = DataConfig(
    format="csv", train=str(tmp_path / "parts"), schema=str(tmp_path / "schema.yaml")
  )
  with pytest.raises(DataError, match=rf"^{parts[1]}:1: its header .* differs from that of"):
    prepare(cfg, tmp_path / "c", progress=False)


def test_a_glob_that_matches_nothing_is_named(tmp_path):
  cfg = DataConfig(format="criteo", train=str(tmp_path / "nothing-*.tsv"))
  with pytest.raises(DataError, match=r"nothing-\*\.tsv: no files"):
    prepare(cfg, tmp_path / "c", progress=False)


def test_two_workers_are_threads_and_more_are_processes(tmp_path, monkeypatch):
  monkeypatch.setattr(PREPARE, "PROCESS_MIN_BYTES", 0)
  monkeypatch.setattr(workers, "available_cores", lambda: 8)  # (workers are capped at the cores)
  tsv = tmp_path / "t.tsv"
  write_criteo_tsv(tsv, SyntheticSpec(num_rows=500, max_vocab=50, seed=1))
  children = lambda: os.times().children_user + os.times().children_system  # noqa: E731
  spent = {}
  for n in (2, 3):
    before = children()
    prepare(
      DataConfig(format="criteo", train=str(tsv)), tmp_path / str(n), progress=False, workers=n
    )
    spent[n] = children() - before
  assert spent[2] == 0 and spent[3] > 0


def test_a_killed_worker_is_one_line_and_exit_2_on_the_command_line(
  tmp_path, monkeypatch, processes
):
  # Issue 33 item 2: WorkerDied was not among the CLI's handled errors (a traceback, exit 1).
  from gin_jax import cli, runtime, training

  tsv = tmp_path / "t.tsv"
  write_criteo_tsv(tsv, SyntheticSpec(num_rows=300, max_vocab=50, seed=1))
  # Each worker process dies (as if killed) when its first task arrives.
  monkeypatch.setattr(workers, "_CHILD", "import os, sys; sys.stdin.buffer.read(8); os._exit(9)")
  monkeypatch.setattr(runtime, "init_runtime", lambda *a, **k: None)
  monkeypatch.setattr(
    training, "run", lambda cfg, workdir, overwrite: prepare(cfg.data, tmp_path, workers=3)
  )
  lines = []

  def exit_in_one_line(message, leave_job=True):
    lines.append(message)
    raise SystemExit(2)

  monkeypatch.setattr(runtime, "_exit_in_one_line", exit_in_one_line)
  args, overrides = cli.parse(["--train", str(tsv), "--workdir", str(tmp_path / "w")])
  with pytest.raises(SystemExit) as e:
    cli.train_main(args, overrides)
  assert e.value.code == 2
  (line,) = lines
  assert re.fullmatch(
    rf"worker process \d+ ended \(exit status 9\) during its chunk, preparing {tsv} "
    r"\(killed, or out of memory\?\); with less memory, use fewer workers "
    r"\(--data\.prepare_workers=N; 1 prepares in this process\)",
    line,
  )


def test_many_workers_on_a_small_input_start_no_more_processes_than_chunks_or_cores(
  tmp_path, monkeypatch, processes
):
  # Issue 33: 32 workers on a 4-chunk input started 32 processes (1.5 GB).
  tsv = tmp_path / "t.tsv"
  write_criteo_tsv(tsv, SyntheticSpec(num_rows=1000, max_vocab=50, seed=1))
  chunks = len(list(text.iter_chunks(tsv)))
  assert 2 < chunks < 8
  started = []
  popen = workers.subprocess.Popen
  monkeypatch.setattr(
    workers.subprocess, "Popen", lambda *a, **k: started.append(1) or popen(*a, **k)
  )
  one = _prepared(DataConfig(format="criteo", train=str(tsv)), tmp_path / "a", workers=1)
  for cores, most in ((64, chunks), (2, 2)):
    monkeypatch.setattr(workers, "available_cores", lambda: cores)  # noqa: B023
    started.clear()
    cfg = DataConfig(format="criteo", train=str(tsv))
    assert _prepared(cfg, tmp_path / str(cores), workers=32) == one
    assert 0 < len(started) <= most, (cores, len(started))
