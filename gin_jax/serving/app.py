"""The HTTP surface: TF Serving's REST API and Prometheus metrics, as a Starlette app.

  GET  /v1/models/NAME                        model_version_status (200 once one is AVAILABLE)
  GET  /v1/models/NAME/metadata               the fields a request may give
  POST /v1/models/NAME:predict                -> {"predictions": [...], "model_version": "N"}
  POST /v1/models/NAME/versions/N:predict     the same, only if N is the serving version
  GET  /metrics                               Prometheus text

Errors are TF Serving's shape, {"error": "one line"}: 400 malformed body, unknown
field or bad value (naming the instance and field), 404 unknown model, version or
path, 413 body over the limit, 503 queue full or no version yet (with Retry-After),
504 past the request's deadline, 500 for a fault of the server itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import traceback

import orjson
import prometheus_client as prom
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gin_jax.serving.batcher import Batcher, Closed, DeadlineExceeded, Overloaded
from gin_jax.serving.requests import RequestError, bad_value, parse_predict
from gin_jax.serving.versions import VersionManager


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may take."""

  max_body_bytes: int = 64 << 20  # Larger bodies get 413.
  deadline_s: float = 10.0  # A request not answered by then gets 504.


class Metrics:
  """The server's Prometheus metrics, in a registry of its own."""

  def __init__(self, max_batch: int):
    prom.disable_created_metrics()  # No *_created series: they only add noise here.
    self.registry = prom.CollectorRegistry()
    r = self.registry
    self.requests = prom.Counter(
      "gin_serve_requests", "Predict requests answered, by HTTP status code", ["code"], registry=r
    )
    self.latency = prom.Histogram(
      "gin_serve_request_seconds",
      "Predict request latency, from its arrival to its answer",
      buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 5),
      registry=r,
    )
    sizes, b = [], 1
    while b < max_batch:
      sizes.append(b)
      b *= 2
    self.batch = prom.Histogram(
      "gin_serve_batch_candidates",
      "Candidates scored per compiled call",
      buckets=(*sizes, max_batch),
      registry=r,
    )
    self.batch_seconds = prom.Histogram(
      "gin_serve_batch_seconds", "Seconds per compiled call (padding included)", registry=r
    )
    self.stage = prom.Histogram(
      "gin_serve_stage_seconds",
      "Seconds per request in each stage: parse (read and check the body), encode (raw "
      "values to ids), wait (queued, batched and scored), respond (the JSON answer)",
      ["stage"],
      buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1),
      registry=r,
    )
    self.queue = prom.Gauge("gin_serve_queue_candidates", "Candidates waiting", registry=r)
    self.in_flight = prom.Gauge(
      "gin_serve_requests_in_flight", "Predict requests received and not yet answered", registry=r
    )
    self.version = prom.Gauge("gin_serve_version", "The serving version (0: none)", registry=r)

  def on_batch(self, n: int, seconds: float) -> None:
    self.batch.observe(n)
    self.batch_seconds.observe(seconds)


def _json(obj, status: int = 200, headers: dict | None = None) -> Response:
  body = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
  return Response(body, status, headers, media_type="application/json")


def _error(status: int, message: str, headers: dict | None = None) -> Response:
  return _json({"error": message}, status, headers)


async def _read_body(request: Request, limit: int) -> bytes:
  declared = request.headers.get("content-length")
  if declared is not None and declared.isdigit() and int(declared) > limit:
    raise RequestError(413, f"the body has {int(declared)} bytes; the limit is {limit}")
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > limit:
      raise RequestError(413, f"the body has over {limit} bytes; the limit is {limit}")
    chunks.append(chunk)
  return b"".join(chunks)


def build_app(
  name: str,
  manager: VersionManager,
  batcher: Batcher,
  metrics: Metrics,
  limits: Limits = Limits(),
  log=print,
  on_shutdown=None,
) -> Starlette:
  """The Starlette app serving model `name` from `manager`'s versions through `batcher`."""
  metrics.queue.set_function(lambda: batcher.depth)

  def version_or_error(request: Request):
    if request.path_params["name"] != name:
      raise RequestError(404, f"model {request.path_params['name']!r} not found; "
                         f"this server serves {name!r}")  # fmt: skip
    current = manager.current
    if current is None:
      raise RequestError(503, f"model {name!r} has no version available yet (loading)",
                         {"Retry-After": "1"})  # fmt: skip
    asked = request.path_params.get("version")
    if asked is not None and asked != str(current.version):
      raise RequestError(
        404, f"version {asked} of model {name!r} is not available (serving {current.version})"
      )  # fmt: skip
    return current

  async def predict(request: Request) -> Response:
    started = time.perf_counter()
    metrics.in_flight.inc()
    try:
      response = await _predict(request, started)
    except RequestError as e:
      response = _error(e.status, e.message, e.headers)
    except Exception as e:  # noqa: BLE001 - a fault answers 500; the server goes on
      log(f"error: {type(e).__name__}: {e}\n{traceback.format_exc()}")
      response = _error(500, f"internal error: {type(e).__name__}: {e}")
    finally:
      metrics.in_flight.dec()
    metrics.requests.labels(str(response.status_code)).inc()
    metrics.latency.observe(time.perf_counter() - started)
    return response

  async def _predict(request: Request, started: float) -> Response:
    version = version_or_error(request)
    body = await _read_body(request, limits.max_body_bytes)
    parsed = parse_predict(body, version.fields)
    parsed_at = time.perf_counter()
    metrics.stage.labels("parse").observe(parsed_at - started)
    ids, values, bad = version.encode(parsed.columns, parsed.rows, parsed.context)
    if bad:
      raise bad_value(bad)
    encoded_at = time.perf_counter()
    metrics.stage.labels("encode").observe(encoded_at - parsed_at)
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def on_done(result):
      loop.call_soon_threadsafe(lambda: done.done() or done.set_result(result))

    deadline = time.monotonic() + limits.deadline_s - (time.perf_counter() - started)
    try:
      pending = batcher.submit(version, ids, values, deadline, on_done)
    except Overloaded:
      raise RequestError(503, "the queue is full; retry later", {"Retry-After": "1"}) from None
    except Closed:
      raise RequestError(503, "the server is shutting down", {"Retry-After": "1"}) from None
    try:
      result = await asyncio.wait_for(done, max(deadline - time.monotonic(), 0))
    except TimeoutError:
      pending.give_up()
      result = DeadlineExceeded()
    if isinstance(result, DeadlineExceeded):
      raise RequestError(504, f"not answered within the deadline ({limits.deadline_s:g} s)")
    if isinstance(result, BaseException):
      raise result
    scored_at = time.perf_counter()
    metrics.stage.labels("wait").observe(scored_at - encoded_at)
    response = _json({"predictions": result, "model_version": str(version.version)})
    metrics.stage.labels("respond").observe(time.perf_counter() - scored_at)
    return response

  async def model_status(request: Request) -> Response:
    if request.path_params["name"] != name:
      return _error(404, f"model {request.path_params['name']!r} not found; "
                    f"this server serves {name!r}")  # fmt: skip
    status = manager.status()
    asked = request.path_params.get("version")
    if asked is not None:
      status = [s for s in status if s["version"] == asked]
      if not status:
        return _error(404, f"version {asked} of model {name!r} is unknown")
    ready = any(s["state"] == "AVAILABLE" for s in status)
    return _json({"model_version_status": status}, 200 if ready else 503)

  async def metadata(request: Request) -> Response:
    try:
      version = version_or_error(request)
    except RequestError as e:
      return _error(e.status, e.message, e.headers)
    fields = [
      {"name": f.name, "kind": f.kind, "transform": f.transform}
      | ({"max_values": f.max_values, "pooling": f.pooling} if f.kind == "multi_valued" else {})
      | ({"target": f.target} if f.target else {})
      | ({"shares": f.shares} if f.shares else {})
      for f in version.meta.fields
    ]
    return _json({"model_spec": {"name": name, "version": str(version.version)},
                  "fields": fields, "batch_sizes": list(version.sizes)})  # fmt: skip

  async def metrics_text(request: Request) -> Response:
    current = manager.current
    metrics.version.set(current.version if current is not None else 0)
    return Response(prom.generate_latest(metrics.registry), media_type=prom.CONTENT_TYPE_LATEST)

  async def http_error(request: Request, exc: HTTPException) -> Response:
    message = {404: f"no such path: {request.url.path}", 405: "method not allowed"}
    return _error(exc.status_code, message.get(exc.status_code, exc.detail))

  @contextlib.asynccontextmanager
  async def lifespan(app):
    yield
    if on_shutdown is not None:
      await asyncio.get_running_loop().run_in_executor(None, on_shutdown)

  routes = [
    Route("/v1/models/{name}:predict", predict, methods=["POST"]),
    Route("/v1/models/{name}/versions/{version}:predict", predict, methods=["POST"]),
    Route("/v1/models/{name}", model_status, methods=["GET"]),
    Route("/v1/models/{name}/versions/{version}", model_status, methods=["GET"]),
    Route("/v1/models/{name}/metadata", metadata, methods=["GET"]),
    Route("/metrics", metrics_text, methods=["GET"]),
  ]
  return Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
