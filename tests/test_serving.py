"""Online serving end to end: scores equal the offline scorer's, every error code, versions.

Two small models are trained on a hand-written CSV with a list field (numeric
fields bucketized with vocabularies; scaled with hashing), exported as versions
of a model base path and served in-process (Service.start) on 127.0.0.1, except
the SIGTERM test, which runs `python -m gin_jax.serve` itself. Servers use small
batch-size ladders so that loading compiles little.
"""

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import subprocess_env

from gin_jax import config as config_lib
from gin_jax import scoring, training
from gin_jax.serving import ServeOptions, Service

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

SCHEMA = """label: click
categorical: [user, item]
numeric: [price, age]
multi_valued:
  genres: {separator: "|", max_values: 3}
"""
GENRES = ["Comedy", "Drama", "Horror", "Action", "A-very-long-genre-name"]
FIELDS = ("user", "item", "price", "age", "genres")


def _rows(rng, n, users=30, items=40):
  rows = []
  for _ in range(n):
    user, item = f"u{rng.integers(users)}", f"i{rng.integers(items)}"
    price = "" if rng.random() < 0.1 else f"{rng.uniform(0, 50):.2f}"
    age = "" if rng.random() < 0.1 else str(int(rng.integers(15, 70)))
    genres = "|".join(rng.choice(GENRES, int(rng.integers(0, 5)), replace=False))
    click = int((user[-1] in "137") ^ (rng.random() < 0.2))
    rows.append([str(click), user, item, price, age, genres])
  return rows


def _write_csv(path, rows, header=("click", *FIELDS)):
  path.write_text(",".join(header) + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
  return path


def _train(root, name, **data):
  cfg = config_lib.tiny()
  cfg = config_lib.override(cfg, {"train.stages": "single", "train.epochs": "1"})
  d = cfg.data
  cfg = cfg.__class__(
    name=name, model=cfg.model, train=cfg.train,
    data=d.__class__(format="csv", train=str(root / "train.csv"), schema=str(root / "schema.yaml"),
                     split=(0.8, 0.2, 0.0), min_count=2, **data),
  )  # fmt: skip
  wd = root / name
  training.run(cfg, wd, devices=jax.devices()[:1])
  return wd


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """The training file, its schema, and the rows to score (as a file and as rows)."""
  root = tmp_path_factory.mktemp("serving")
  (root / "schema.yaml").write_text(SCHEMA)
  _write_csv(root / "train.csv", _rows(np.random.default_rng(0), 400))
  score_rows = [r[1:] for r in _rows(np.random.default_rng(1), 40, users=40, items=60)]
  score_rows[0][4] = "Comedy|Drama|Horror|Action"  # more values than max_values keeps
  score_rows[1] = ["", "", "", "", ""]  # all missing
  _write_csv(root / "score.csv", score_rows, header=FIELDS)
  return root, score_rows


def _trained(root, name, **data):
  wd = _train(root, name, **data)
  base = root / f"base_{name}"
  scoring.export_version(wd, base)
  return wd, base


@pytest.fixture(scope="module")
def vocab(root):
  """A model with numeric fields bucketized and vocabularies: (workdir, base path)."""
  return _trained(root[0], "vocab", numeric="bucketize")


@pytest.fixture(scope="module")
def hashed(root):
  """A model with numeric fields scaled and categories hashed: (workdir, base path)."""
  return _trained(root[0], "hashed", numeric="scale", hash_buckets=16)


@pytest.fixture
def served():
  """A started Service per base path (stopped after the test)."""
  started = []

  def start(base, **options):
    options = {"batch_sizes": (8, 64), "max_batch": 64, "poll_seconds": 0.1, **options}
    service = Service(ServeOptions(str(base), model_name="ctr", port=0, **options),
                      log=lambda m: None)  # fmt: skip
    port = service.start()
    started.append(service)
    assert _wait_available(port)
    return service, port

  yield start
  for service in started:
    service.stop()


def _request(port, method, path, body=None, timeout=30):
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
  try:
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    text = payload.decode()
    parsed = json.loads(text) if response.getheader("Content-Type", "").startswith(
      "application/json") else text  # fmt: skip
    return response.status, parsed, dict(response.getheaders())
  finally:
    conn.close()


def _wait_available(port, timeout=60):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    try:
      if _request(port, "GET", "/v1/models/ctr")[0] == 200:
        return True
    except OSError:
      pass
    time.sleep(0.1)
  return False


def _json_value(field, text):
  if text == "":
    return None
  if field == "genres":
    return text.split("|")
  if field == "age":
    return int(text)
  if field == "price":
    return float(text)
  return text


@pytest.mark.parametrize("model", ["vocab", "hashed"])
def test_served_scores_equal_the_offline_scorers(request, root, served, model):
  wd, base = request.getfixturevalue(model)
  rows, score_file = root[1], root[0] / "score.csv"
  expected, _, _, bad = scoring.Scorer.from_checkpoint(wd, devices=jax.devices()[:1]).predict_file(
    score_file
  )
  assert bad.count == 0 and len(expected) == len(rows)
  _, port = served(base)
  instances = [{f: _json_value(f, v) for f, v in zip(FIELDS, r) if v != ""} for r in rows]
  status, out, _ = _request(port, "POST", "/v1/models/ctr:predict", {"instances": instances})
  assert status == 200 and out["model_version"] == "1"
  np.testing.assert_allclose(out["predictions"], expected, atol=1e-6)
  columns = {f: [_json_value(f, r[j]) for r in rows] for j, f in enumerate(FIELDS)}
  status, out, _ = _request(port, "POST", "/v1/models/ctr/versions/1:predict", {"inputs": columns})
  assert status == 200
  np.testing.assert_allclose(out["predictions"], expected, atol=1e-6)
  # One user, many candidates: the user's fields in context.
  same_user = [r for r in rows if r[0] and r[3]][:6]
  context_rows = [[same_user[0][0], r[1], r[2], same_user[0][3], r[4]] for r in same_user]
  path = score_file.with_name(f"context_{model}.csv")
  path.write_text("user,item,price,age,genres\n" + "\n".join(",".join(r) for r in context_rows))
  expected = scoring.Scorer.from_checkpoint(wd, devices=jax.devices()[:1]).predict_file(path)[0]
  body = {
    "context": {"user": same_user[0][0], "age": int(same_user[0][3])},
    "inputs": {f: [_json_value(f, r[j]) for r in context_rows] for j, f in enumerate(FIELDS)
               if f not in ("user", "age")},
  }  # fmt: skip
  status, out, _ = _request(port, "POST", "/v1/models/ctr:predict", body)
  assert status == 200
  np.testing.assert_allclose(out["predictions"], expected, atol=1e-6)


def test_every_error_code_in_tf_servings_shape(vocab, served):
  service, port = served(vocab[1], max_body_mb=0.01)
  predict = "/v1/models/ctr:predict"
  cases = [
    (b"{not json", 400, "the body is not JSON"),
    (b"[1, 2]", 400, "the body must be a JSON object"),
    ({"instances": [], "inputs": {}}, 400, "exactly one of"),
    ({"instances": [{"user": "u1"}, {"usr": "u2"}]}, 400, "instances[1]: unknown field 'usr'"),
    ({"instances": [{"user": "u1"}, {"user": 2.5}]}, 400, "instances[1]: user: 2.5 is not a"),
    ({"instances": [{"price": "cheap"}]}, 400, "instances[0]: price: 'cheap' is not a number"),
    ({"instances": [{"genres": 7}]}, 400, "instances[0]: genres: 7 is not a list"),
    ({"inputs": {"user": ["a", "b"], "item": ["c"]}}, 400, "'item' has 1 values, 'user' has 2"),
    ({"inputs": {"user": "a"}}, 400, "inputs['user'] must be a list"),
    ({"context": {"age": "old"}, "inputs": {"user": ["a"]}}, 400, "context: age: 'old' is not"),
    ({"context": {"nope": 1}, "instances": [{}]}, 400, "context: unknown field 'nope'"),
    ({"instances": [{"user": "a"}], "extra": 1}, 400, "unknown key 'extra'"),
    ({"instances": [{}] * 5000}, 413, "the limit is 10485"),
  ]
  for body, code, message in cases:
    status, out, _ = _request(port, "POST", predict, body)
    assert (status, set(out)) == (code, {"error"}), (body, out)
    assert message in out["error"], (message, out)
  assert _request(port, "POST", "/v1/models/other:predict", {"instances": [{}]})[:2] == (
    404, {"error": "model 'other' not found; this server serves 'ctr'"})  # fmt: skip
  status, out, _ = _request(port, "POST", "/v1/models/ctr/versions/7:predict", {"instances": [{}]})
  assert status == 404 and "version 7 of model 'ctr' is not available (serving 1)" in out["error"]
  assert _request(port, "GET", "/v2/nothing")[:2] == (404, {"error": "no such path: /v2/nothing"})
  # 503 (queue full) and 504 (deadline): the model held at a gate.
  version, gate, entered = service.manager.current, threading.Event(), threading.Event()
  predict_fn = version.predict

  def held(ids, values):
    entered.set()
    assert gate.wait(30)
    return predict_fn(ids, values)

  version.predict = held
  service.batcher.max_queue = 64
  replies = []
  post64 = lambda: replies.append(_request(port, "POST", predict, {"instances": [{}] * 64}))
  first = threading.Thread(target=post64)  # taken at once, held in the call
  first.start()
  assert entered.wait(30)
  second = threading.Thread(target=post64)  # fills the queue
  second.start()
  deadline = time.monotonic() + 30
  while service.batcher.depth < 64 and time.monotonic() < deadline:
    time.sleep(0.01)
  status, out, headers = _request(port, "POST", predict, {"instances": [{}] * 8})
  assert status == 503 and "queue is full" in out["error"] and headers["retry-after"] == "1"
  gate.set()
  first.join(30)
  second.join(30)
  assert [r[0] for r in replies] == [200, 200]
  version.predict = predict_fn
  gate.clear()
  short = Service(ServeOptions(str(vocab[1]), model_name="ctr", port=0,
                               batch_sizes=(8,), max_batch=8, deadline_ms=300),
                  log=lambda m: None)  # fmt: skip
  short_port = short.start()
  try:
    assert _wait_available(short_port)
    v = short.manager.current
    slow = v.predict
    v.predict = lambda ids, values: gate.wait(30) and slow(ids, values)
    started = time.monotonic()
    status, out, _ = _request(short_port, "POST", predict, {"instances": [{}]})
    assert status == 504 and "deadline (0.3 s)" in out["error"]
    assert time.monotonic() - started < 5
    gate.set()
  finally:
    short.stop()
  metrics = _request(port, "GET", "/metrics")[1]
  for line in ('gin_serve_requests_total{code="400"} 12.0', 'gin_serve_requests_total{code="413"}',
               'gin_serve_requests_total{code="503"} 1.0', "gin_serve_version 1.0",
               "gin_serve_queue_candidates 0.0", "gin_serve_batch_candidates_bucket"):  # fmt: skip
    assert line in metrics, line


def test_nothing_compiles_on_the_request_path(hashed, served):
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **kw: compiles.append(event)
    if event == "/jax/core/compile/backend_compile_duration" else None
  )  # fmt: skip
  _, port = served(hashed[1])
  before = len(compiles)
  for n in (1, 7, 8, 9, 64, 65, 200):
    body = {"instances": [{"user": f"u{k}", "genres": ["Drama"]} for k in range(n)]}
    status, out, _ = _request(port, "POST", "/v1/models/ctr:predict", body)
    assert status == 200 and len(out["predictions"]) == n
  assert len(compiles) == before


def _copy_version(base, source, version):
  """A version written as export_version does: a temporary folder renamed into place."""
  tmp = base / f".export-copy-{version}"
  shutil.copytree(source, tmp)
  os.rename(tmp, base / str(version))


def test_a_new_version_swaps_in_under_load_without_a_failed_request(
  vocab, hashed, served, tmp_path
):
  base = tmp_path / "base"
  base.mkdir()
  _copy_version(base, vocab[1] / "1", 1)
  service, port = served(base)
  stop, results = threading.Event(), []

  def client():
    body = {"instances": [{"user": "u1", "item": "i3"}] * 5}
    while not stop.is_set():
      status, out, _ = _request(port, "POST", "/v1/models/ctr:predict", body)
      results.append((status, out.get("model_version")))

  threads = [threading.Thread(target=client) for _ in range(4)]
  for t in threads:
    t.start()
  time.sleep(0.5)
  _copy_version(base, hashed[1] / "1", 2)  # another model: other scores
  deadline = time.monotonic() + 30
  while not any(v == "2" for _, v in results[-4:]) and time.monotonic() < deadline:
    time.sleep(0.1)
  time.sleep(0.3)
  stop.set()
  for t in threads:
    t.join(10)
  statuses = {s for s, _ in results}
  served_versions = [v for _, v in results]
  assert statuses == {200}, statuses
  assert served_versions[0] == "1" and served_versions[-1] == "2"
  assert service.manager.current.version == 2
  status, out, _ = _request(port, "GET", "/v1/models/ctr")
  assert status == 200 and out["model_version_status"][0] == {
    "version": "2",
    "state": "AVAILABLE",
    "status": {"error_code": "OK", "error_message": ""},
  }


def test_a_corrupt_version_is_skipped_and_tried_again_when_its_files_change(vocab, tmp_path):
  base = tmp_path / "base"
  base.mkdir()
  _copy_version(base, vocab[1] / "1", 1)
  logged = []
  service = Service(ServeOptions(str(base), model_name="ctr", port=0, batch_sizes=(8,),
                                 max_batch=8, poll_seconds=0.1), log=logged.append)  # fmt: skip
  port = service.start()
  try:
    assert _wait_available(port)
    _copy_version(base, vocab[1] / "1", 2)
    params = base / "2" / "params.npz"
    good = params.read_bytes()
    params.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    time.sleep(1.0)  # several polls
    skipped = [m for m in logged if m.startswith("version 2 skipped")]
    assert len(skipped) == 1 and "params.npz" in skipped[0], logged
    assert service.manager.current.version == 1
    status, out, _ = _request(port, "POST", "/v1/models/ctr:predict", {"instances": [{}]})
    assert status == 200 and out["model_version"] == "1"
    status, out, _ = _request(port, "GET", "/v1/models/ctr")
    states = {s["version"]: s for s in out["model_version_status"]}
    assert states["2"]["state"] == "END" and "params.npz" in states["2"]["status"]["error_message"]
    params.write_bytes(good)  # the copy completes: its files change, and it loads
    deadline = time.monotonic() + 30
    while service.manager.current.version != 2 and time.monotonic() < deadline:
      time.sleep(0.1)
    assert service.manager.current.version == 2
  finally:
    service.stop()


def test_export_versions_are_numbered_never_replaced_and_written_whole(vocab, tmp_path, capsys):
  from gin_jax import score

  wd = vocab[0]
  base = tmp_path / "base"
  (base / ".export-abandoned").mkdir(parents=True)  # a killed export: not a version
  (base / "notes").mkdir()
  score.main(["--checkpoint", str(wd), "--export", str(base), "--next-version"])
  score.main(["--checkpoint", str(wd), "--export", str(base), "--next-version"])
  assert scoring.versions(base) == [1, 2]
  assert "exported to" in capsys.readouterr().out
  with pytest.raises(scoring.ScoringError, match="version 2 exists already"):
    scoring.export_version(wd, base, version=2)
  assert scoring.versions(base) == [1, 2]
  assert not [p for p in base.iterdir() if p.name.startswith(".export-") and p.name != (
    ".export-abandoned")]  # fmt: skip
  assert sorted(p.name for p in (base / "2").iterdir()) == sorted(
    [*scoring.EXPORT_FILES, "seal.json"]
  )


def test_sigterm_answers_the_queued_requests_and_exits_0(vocab, tmp_path):
  base = vocab[1]
  env = subprocess_env(devices=None)
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  cmd = [sys.executable, "-m", "gin_jax.serve", "--model-base-path", str(base), "--model-name",
         "ctr", "--port", str(port), "--batch-sizes", "8", "--max-batch", "8",
         "--max-queue", "100000"]  # fmt: skip
  proc = subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
  try:
    assert _wait_available(port, timeout=60)
    replies = []
    body = {"instances": [{"user": "u1", "genres": ["Drama", "Comedy"]}] * 3000}
    post = lambda: replies.append(_request(port, "POST", "/v1/models/ctr:predict", body, 60))
    threads = [threading.Thread(target=post) for _ in range(3)]
    for t in threads:
      t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # until all three are received, and one is queued
      metrics = _request(port, "GET", "/metrics")[1]
      names = ("gin_serve_requests_in_flight", "gin_serve_queue_candidates")
      in_flight, queued = (float(metrics.split(f"\n{n} ")[1].split()[0]) for n in names)
      if in_flight == 3 and queued:
        break
    proc.send_signal(signal.SIGTERM)
    for t in threads:
      t.join(60)
    assert proc.wait(60) == 0
    assert [(s, len(out.get("predictions", ()))) for s, out, _ in replies] == [(200, 3000)] * 3, (
      replies
    )
    assert "stopped: every queued request was answered" in proc.stderr.read()
  finally:
    proc.kill()
