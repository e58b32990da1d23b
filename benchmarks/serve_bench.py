"""Online serving: latency and throughput of `python -m gin_jax.serve` against the bare export.

  python -m benchmarks.serve_bench [--workdir runs/demo] [--seconds 8] [--record | --json OUT]

The demo model (trained into --workdir first if it has no finished run) is
exported as version 1 of a scratch model base path and served by
`python -m gin_jax.serve` on 127.0.0.1. A load generator, a process of its own
(asyncio + h11, keep-alive connections, one request at a time each), sends
ranking requests for --seconds at concurrency 1, 8 and 32, in two shapes: one
`context` (the numeric I-fields of one demo row) plus candidates that vary in the
categorical C-fields, (a) 100 and (b) 1,000 of them, in the columnar form. Each
(shape, concurrency) reports p50 / p90 / p99 latency, requests/s and candidates/s,
and the server's own split of a request's time (parse, encode, wait = queued +
batched + scored, respond) from its Prometheus metrics.

The limit: the same compiled scoring calls on pre-encoded arrays in this process,
with the server idle (bare candidates/s at 100, 1,000 and --max-batch candidates).

Then a hot swap: at concurrency 8, shape (a), for --swap-seconds, while a new
version is exported into the base path; every request must succeed and the served
version must change. Goals (this 2-core CPU): (a) at concurrency 1, p50 <= 3 ms;
(b) at concurrency 32, candidates/s >= 0.5 x bare at --max-batch; p99 <= 4 x p50.

Writes nothing unless asked: --record writes benchmarks/results/serve_bench_cpu.json,
--json OUT another file.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common

SHAPES = {"a": 100, "b": 1000}
CONCURRENCY = (1, 8, 32)
STAGES = ("parse", "encode", "wait", "respond")


# ------------------------------------------------------------------ the load generator


async def _client(port, path, bodies, warm_until, stop_at, out):
  import h11

  reader, writer = await asyncio.open_connection("127.0.0.1", port)
  conn = h11.Connection(h11.CLIENT)
  i = 0
  try:
    while time.perf_counter() < stop_at:
      body = bodies[i % len(bodies)]
      i += 1
      headers = [("Host", "127.0.0.1"), ("Content-Type", "application/json"),
                 ("Content-Length", str(len(body)))]  # fmt: skip
      started = time.perf_counter()
      writer.write(conn.send(h11.Request(method="POST", target=path, headers=headers)))
      writer.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
      status, tail = None, b""
      while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
          data = await reader.read(1 << 16)
          if not data:
            raise ConnectionError("the server closed the connection")
          conn.receive_data(data)
        elif isinstance(event, h11.Response):
          status = event.status_code
        elif isinstance(event, h11.Data):
          tail = (tail + bytes(event.data))[-64:]  # model_version is at the end
        elif isinstance(event, h11.EndOfMessage):
          break
      conn.start_next_cycle()
      if started >= warm_until:
        version = (
          tail.rsplit(b'"model_version":"', 1)[-1].split(b'"', 1)[0] if status == 200 else b""
        )
        out.append((time.perf_counter() - started, status, version.decode()))
  finally:
    writer.close()


async def _load(port, path, bodies, concurrency, seconds, warmup):
  now = time.perf_counter()
  out: list = []
  clients = [_client(port, path, bodies, now + warmup, now + warmup + seconds, out)
             for _ in range(concurrency)]  # fmt: skip
  errors = [e for e in await asyncio.gather(*clients, return_exceptions=True) if e]
  return out, [f"{type(e).__name__}: {e}" for e in errors]


def loadgen(argv) -> None:
  """The load generator process: prints its measurements as one JSON line."""
  p = argparse.ArgumentParser()
  p.add_argument("--port", type=int)
  p.add_argument("--path")
  p.add_argument("--bodies")
  p.add_argument("--concurrency", type=int)
  p.add_argument("--seconds", type=float)
  p.add_argument("--warmup", type=float, default=1.0)
  a = p.parse_args(argv)
  bodies = [b.encode() for b in json.loads(Path(a.bodies).read_text())]
  out, errors = asyncio.run(_load(a.port, a.path, bodies, a.concurrency, a.seconds, a.warmup))
  latencies = np.array([t for t, s, _ in out if s == 200]) * 1000
  statuses, versions = {}, {}
  for _, s, v in out:
    statuses[str(s)] = statuses.get(str(s), 0) + 1
    if v:
      versions[v] = versions.get(v, 0) + 1
  pct = lambda q: float(np.percentile(latencies, q)) if len(latencies) else None
  print(json.dumps({
    "requests": len(out), "ok": int(len(latencies)), "statuses": statuses,
    "versions": versions, "client_errors": errors, "seconds": a.seconds,
    "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
    "order": [v for _, _, v in out[:: max(1, len(out) // 200)]],
  }))  # fmt: skip


def _run_loadgen(port, path, bodies_file, concurrency, seconds, warmup=1.0) -> dict:
  cmd = [sys.executable, "-m", "benchmarks.serve_bench", "--loadgen", "--port", str(port),
         "--path", path, "--bodies", str(bodies_file), "--concurrency", str(concurrency),
         "--seconds", str(seconds), "--warmup", str(warmup)]  # fmt: skip
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warmup + 120)
  if proc.returncode:
    raise RuntimeError(f"the load generator failed: {proc.stderr[-2000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the server


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _get(port, path) -> tuple[int, str]:
  import http.client

  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
  try:
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read().decode()
  finally:
    conn.close()


def _wait_ready(port, name, proc, timeout=300) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f"the server exited: {proc.stderr.read()[-2000:]}")
    try:
      if _get(port, f"/v1/models/{name}")[0] == 200:
        return
    except OSError:
      pass
    time.sleep(0.2)
  raise RuntimeError("the server did not become ready")


def _stage_totals(metrics: str) -> dict:
  """{name: value} of the stage and batch sums and counts in Prometheus text."""
  out = {}
  for line in metrics.splitlines():
    if line.startswith(("gin_serve_stage_seconds_", "gin_serve_batch_")) and (
      "_sum" in line or "_count" in line
    ):
      key, value = line.rsplit(" ", 1)
      out[key] = float(value)
  return out


def _stage_split(before: dict, after: dict) -> dict:
  """Mean ms per request of each stage, and per compiled call, between two metric reads."""
  d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
  split = {}
  for stage in STAGES:
    n = d.get(f'gin_serve_stage_seconds_count{{stage="{stage}"}}', 0)
    s = d.get(f'gin_serve_stage_seconds_sum{{stage="{stage}"}}', 0)
    split[f"{stage}_ms"] = 1000 * s / n if n else None
  calls = d.get("gin_serve_batch_seconds_count", 0)
  split["model_ms_per_call"] = (
    1000 * d.get("gin_serve_batch_seconds_sum", 0) / calls if calls else None
  )
  split["candidates_per_call"] = (
    d.get("gin_serve_batch_candidates_sum", 0) / calls if calls else None
  )
  return split


# ------------------------------------------------------------------ the demo model and requests


def _demo_run(workdir: Path) -> None:
  """Trains the demo into workdir unless a finished run is there."""
  if (workdir / "report.json").exists():
    return
  from gin_jax import config, training

  print(f"training the demo model into {workdir} (once)", file=sys.stderr, flush=True)
  training.run(config.demo(), workdir)


def _bodies(workdir: Path, meta, candidates: int, count: int) -> list[str]:
  """Request bodies: one context of I-fields, `candidates` rows of C-fields, from demo rows."""
  source = sorted(glob.glob(str(workdir / "data" / "cache" / "synthetic-*.tsv")))[0]
  need = count * candidates + count
  rows = []
  with open(source) as f:
    for line in f:
      rows.append(line.rstrip("\n").split("\t")[1:])
      if len(rows) >= need:
        break
  names = meta.field_names
  numeric = [j for j, n in enumerate(names) if meta.field(n).kind == "numeric"]
  categorical = [j for j, n in enumerate(names) if meta.field(n).kind != "numeric"]
  out = []
  for k in range(count):
    user = rows[k]
    cands = rows[count + k * candidates : count + (k + 1) * candidates]
    body = {
      "context": {names[j]: int(user[j]) if user[j] else None for j in numeric},
      "inputs": {names[j]: [r[j] or None for r in cands] for j in categorical},
    }
    out.append(json.dumps(body))
  return out


def _bare(version_dir: Path, bodies: dict, max_batch: int) -> dict:
  """Bare candidates/s of the compiled calls on pre-encoded arrays, at each size."""
  from gin_jax.serving import ServedVersion

  sizes = sorted({*SHAPES.values(), max_batch})
  v = ServedVersion(1, version_dir, sizes)
  out = {}
  for n in sizes:
    shape = "b" if n >= SHAPES["b"] else "a"
    body = json.loads(bodies[shape][0])
    ids, values, _ = v.encode(body["inputs"], SHAPES[shape], body["context"])
    reps = -(-n // len(ids))
    ids, values = np.tile(ids, (reps, 1))[:n], np.tile(values, (reps, 1))[:n]
    seconds = common.time_fn(v.predict, ids, values, warmup=3, iters=30)
    out[n] = n / seconds
  return out


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] == "--loadgen":
    loadgen(argv[1:])
    return {}
  p = argparse.ArgumentParser(prog="python -m benchmarks.serve_bench",
                              description=__doc__.split("\n\n")[0])  # fmt: skip
  p.add_argument("--workdir", default="runs/demo", help="a finished demo run (else trained)")
  p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per point")
  p.add_argument("--swap-seconds", type=float, default=20.0, help="load during the hot swap")
  p.add_argument("--max-batch", type=int, default=4096, help="the server's --max-batch")
  p.add_argument("--batch-timeout-us", type=int, default=0, help="the server's")
  p.add_argument("--concurrency", default="1,8,32", help="client connections, e.g. 1,8,32")
  common.add_output_flags(p, "serve_bench_<backend>.json")
  p.add_argument("--server-xla-flags", default="", help="XLA_FLAGS added for the server")
  args = p.parse_args(argv)
  started = time.time()
  from gin_jax import scoring

  workdir = Path(args.workdir)
  _demo_run(workdir)
  scratch = Path(tempfile.mkdtemp(prefix="serve_bench-"))
  base = scratch / "demo"
  v1 = scoring.export_version(workdir, base)
  meta = scoring.read_export(v1).meta
  bodies, files = {}, {}
  for shape, n in SHAPES.items():
    bodies[shape] = _bodies(workdir, meta, n, 8)
    files[shape] = scratch / f"bodies_{shape}.json"
    files[shape].write_text(json.dumps(bodies[shape]))
  print("bare compiled calls on pre-encoded arrays ...", file=sys.stderr, flush=True)
  bare = _bare(v1, bodies, args.max_batch)
  port = _free_port()
  cmd = [sys.executable, "-m", "gin_jax.serve", "--model-base-path", str(base), "--port",
         str(port), "--max-batch", str(args.max_batch), "--batch-timeout-us",
         str(args.batch_timeout_us), "--max-queue", "64000", "--poll-seconds", "0.5"]  # fmt: skip
  env = dict(os.environ)
  if args.server_xla_flags:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + args.server_xla_flags).strip()
  server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
  records, swap = [], None
  try:
    _wait_ready(port, "demo", server)
    path = "/v1/models/demo:predict"
    for shape, n in SHAPES.items():
      for c in (int(x) for x in args.concurrency.split(",")):
        before = _stage_totals(_get(port, "/metrics")[1])
        r = _run_loadgen(port, path, files[shape], c, args.seconds)
        split = _stage_split(before, _stage_totals(_get(port, "/metrics")[1]))
        rps = r["ok"] / args.seconds
        records.append({
          "shape": shape, "candidates": n, "concurrency": c, "p50_ms": r["p50_ms"],
          "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"], "requests_per_s": rps,
          "candidates_per_s": rps * n, "bare_candidates_per_s": bare[n],
          "bare_candidates_per_s_max_batch": bare[args.max_batch], "statuses": r["statuses"],
          "client_errors": r["client_errors"], **split,
        })  # fmt: skip
        print(f"{shape} x{c}: p50 {r['p50_ms']:.2f} ms, {rps * n:,.0f} candidates/s",
              file=sys.stderr, flush=True)  # fmt: skip
    swap = _hot_swap(port, path, files["a"], workdir, base, args.swap_seconds)
  finally:
    server.send_signal(signal.SIGTERM)
    try:
      exit_code = server.wait(60)
    except subprocess.TimeoutExpired:
      server.kill()
      exit_code = None
  payload = {
    **common.backend_info(), "bench": "serve_bench", "max_batch": args.max_batch,
    "batch_timeout_us": args.batch_timeout_us, "seconds_per_point": args.seconds,
    "bare_candidates_per_s": bare, "records": records, "hot_swap": swap,
    "server_exit_code": exit_code, "wall_s": time.time() - started,
  }  # fmt: skip
  payload["goals"] = _goals(records, swap, bare, args.max_batch)
  _print(payload)
  common.write_result(payload, args, common.backend_file("serve_bench"))
  return payload


def _hot_swap(port, path, bodies_file, workdir, base, seconds) -> dict:
  import threading

  from gin_jax import scoring

  result = {}
  thread = threading.Thread(target=lambda: result.update(
    _run_loadgen(port, path, bodies_file, 8, seconds, warmup=0.5)))  # fmt: skip
  thread.start()
  time.sleep(min(5.0, seconds / 4))
  exported_at = time.time()
  scoring.export_version(workdir, base)  # version 2 lands under load
  thread.join()
  order = result["order"]
  return {
    "seconds": seconds, "requests": result["requests"], "statuses": result["statuses"],
    "versions": result["versions"], "client_errors": result["client_errors"],
    "failed": result["requests"] - result["ok"] + len(result["client_errors"]),
    "version_changed": bool(order) and order[0] == "1" and order[-1] == "2",
    "export_seconds": time.time() - exported_at, "p99_ms": result["p99_ms"],
  }  # fmt: skip


def _goals(records, swap, bare, max_batch) -> list[dict]:
  at = {(r["shape"], r["concurrency"]): r for r in records}
  goals = []
  if ("a", 1) in at:
    p50 = at["a", 1]["p50_ms"]
    goals.append({"goal": "(a) 100 candidates, concurrency 1: p50 <= 3 ms",
                  "value": p50, "pass": p50 is not None and p50 <= 3.0})  # fmt: skip
  if ("b", 32) in at:
    ratio = at["b", 32]["candidates_per_s"] / bare[max_batch]
    goals.append({"goal": "(b) 1,000 candidates, concurrency 32: candidates/s >= 0.5 x bare "
                  f"at {max_batch}", "value": ratio, "pass": ratio >= 0.5})  # fmt: skip
  worst = max((r["p99_ms"] / r["p50_ms"] for r in records if r["p50_ms"]), default=None)
  goals.append({"goal": "p99 <= 4 x p50 at every point", "value": worst,
                "pass": worst is not None and worst <= 4.0})  # fmt: skip
  if swap is not None:
    ok = swap["failed"] == 0 and swap["version_changed"]
    goals.append({"goal": "hot swap under load: no failed request, the version changes",
                  "value": swap["failed"], "pass": ok})  # fmt: skip
  return goals


def _print(payload) -> None:
  rows = []
  for r in payload["records"]:
    f = lambda x, d=2: "-" if x is None else f"{x:.{d}f}"
    rows.append([
      f"({r['shape']}) {r['candidates']:,}", r["concurrency"], f(r["p50_ms"]), f(r["p90_ms"]),
      f(r["p99_ms"]), f"{r['requests_per_s']:,.0f}", f"{r['candidates_per_s']:,.0f}",
      f"{r['bare_candidates_per_s']:,.0f}", f(r["parse_ms"]), f(r["encode_ms"]),
      f(r["wait_ms"]), f(r["respond_ms"]), f(r["candidates_per_call"], 0),
    ])  # fmt: skip
  head = ["shape", "conc.", "p50 ms", "p90 ms", "p99 ms", "req/s", "cand/s", "bare cand/s",
          "parse ms", "encode ms", "wait ms", "respond ms", "cand/call"]  # fmt: skip
  print(common.markdown_table(head, rows))
  bare = payload["bare_candidates_per_s"]
  print("bare candidates/s: " + ", ".join(f"{n:,} rows {v:,.0f}" for n, v in bare.items()))
  swap = payload["hot_swap"]
  if swap:
    print(f"hot swap: {swap['requests']} requests in {swap['seconds']:g} s, statuses "
          f"{swap['statuses']}, versions {swap['versions']}, failed {swap['failed']}")  # fmt: skip
  for g in payload["goals"]:
    value = "-" if g["value"] is None else f"{g['value']:.3g}"
    print(f"{'PASS' if g['pass'] else 'MISS'}  {g['goal']}: {value}")
  print(f"server exit code after SIGTERM: {payload['server_exit_code']}; "
        f"wall {payload['wall_s']:.0f} s")  # fmt: skip


if __name__ == "__main__":
  main()
