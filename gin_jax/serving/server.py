"""Runs the server: the versions, the batcher and the app under uvicorn, until SIGTERM.

On SIGTERM or SIGINT uvicorn stops accepting connections and waits for the
requests in flight; then the batcher answers what is queued, and the process
exits 0.
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from gin_jax.scoring import versions
from gin_jax.serving.app import Limits, Metrics, build_app
from gin_jax.serving.batcher import Batcher
from gin_jax.serving.model import batch_ladder
from gin_jax.serving.versions import VersionManager


@dataclasses.dataclass(frozen=True)
class ServeOptions:
  """`python -m gin_jax.serve`'s options (see its --help)."""

  model_base_path: str  # The model base path: numbered export versions.
  model_name: str | None = None  # The NAME of /v1/models/NAME (default: the base path's name).
  host: str = "127.0.0.1"  # The address to listen on.
  port: int = 8501  # The port (0: any free one, printed at start-up).
  max_batch: int = 4096  # The most candidates one compiled call scores.
  batch_sizes: tuple[int, ...] = ()  # The compiled batch sizes (default: powers of 2 to max_batch).
  # How long a batch with room waits for more requests. 0: a call takes what is queued
  # when the model is free, so requests batch while a call runs. serve_bench on 2 CPU
  # cores: 0 against 500 us, p50 of a lone 100-candidate request 3.25 against 3.98 ms;
  # 32 clients of 100 candidates, 39k against 53k candidates/s (waiting helps there).
  batch_timeout_us: int = 0
  max_queue: int = 0  # The most candidates waiting (0: 8 x max_batch); beyond, 503.
  poll_seconds: float = 1.0  # How often the base path is looked at for new versions.
  deadline_ms: int = 10_000  # A request not answered by then gets 504.
  max_body_mb: float = 64.0  # A larger request body gets 413.
  shutdown_timeout_s: float = 30.0  # How long SIGTERM waits for the requests in flight.

  @property
  def name(self) -> str:
    return self.model_name or Path(self.model_base_path).resolve().name

  @property
  def sizes(self) -> tuple[int, ...]:
    sizes = self.batch_sizes or batch_ladder(self.max_batch)
    return tuple(sorted({*(s for s in sizes if s < self.max_batch), self.max_batch}))


def check(options: ServeOptions) -> None:
  """Raises ValueError naming the option for a value out of range."""
  base = Path(options.model_base_path)
  if not base.is_dir():
    raise ValueError(f"--model-base-path {base}: not a directory")
  positive = {
    "--max-batch": options.max_batch,
    "--poll-seconds": options.poll_seconds,
    "--deadline-ms": options.deadline_ms,
    "--max-body-mb": options.max_body_mb,
  }
  for flag, value in positive.items():
    if not value > 0 or value != value:
      raise ValueError(f"{flag} must be positive, got {value}")
  if options.batch_timeout_us < 0 or options.max_queue < 0:
    raise ValueError("--batch-timeout-us and --max-queue must be >= 0")
  if not 0 <= options.port < 65536:
    raise ValueError(f"--port {options.port} is not a port number")
  if any(s < 1 or s > options.max_batch for s in options.batch_sizes):
    raise ValueError(f"--batch-sizes must lie in [1, --max-batch {options.max_batch}]")


def log(message: str) -> None:
  stamp = time.strftime("%Y-%m-%d %H:%M:%S")
  print(f"{stamp} {message}", file=sys.stderr, flush=True)


class Service:
  """The server's parts, built and checked: run() serves until a signal; start() in a thread.

  Attributes:
    options: its options.
    manager: the versions (VersionManager).
    batcher: the queue and its worker (Batcher).
    metrics: the Prometheus metrics.
    app: the Starlette app.
    port: the port it listens on, once started.
  """

  def __init__(self, options: ServeOptions, log=log):
    check(options)
    self.options = options
    self._log = log
    self.metrics = Metrics(options.max_batch)
    self.manager = VersionManager(options.model_base_path, options.sizes, log)
    self.batcher = Batcher(
      options.max_batch,
      options.batch_timeout_us / 1e6,
      options.max_queue or 8 * options.max_batch,
      on_batch=self.metrics.on_batch,
    )
    limits = Limits(int(options.max_body_mb * (1 << 20)), options.deadline_ms / 1000)
    self.app = build_app(
      options.name, self.manager, self.batcher, self.metrics, limits, log=log,
      on_shutdown=self._shutdown,
    )  # fmt: skip
    self.port: int | None = None
    self._server = None
    self._thread: threading.Thread | None = None

  def _shutdown(self) -> None:
    self.manager.stop()
    self.batcher.close()
    self._log("stopped: every queued request was answered")

  def _listen(self):
    import uvicorn

    o = self.options
    sock = socket.socket(socket.AF_INET6 if ":" in o.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      sock.bind((o.host, o.port))
    except OSError as e:
      sock.close()
      raise OSError(e.errno, e.strerror, f"{o.host}:{o.port}") from None
    sock.listen(1024)
    self.port = sock.getsockname()[1]
    config = uvicorn.Config(
      self.app,
      log_level="warning",
      access_log=False,
      timeout_graceful_shutdown=o.shutdown_timeout_s,
      lifespan="on",
    )
    self._server = uvicorn.Server(config)
    self._log(f"model {o.name!r}: serving {o.model_base_path} on "
              f"http://{o.host}:{self.port}/v1/models/{o.name}")  # fmt: skip
    if not versions(o.model_base_path):
      self._log(f"{o.model_base_path} has no version yet: waiting for one")
    self.manager.start(o.poll_seconds)  # Loads the first version meanwhile: GET says LOADING.
    return sock

  def run(self) -> None:
    """Serves until SIGTERM / SIGINT, then answers what is queued and returns."""
    sock = self._listen()
    # uvicorn shuts down gracefully on these, then restores the handlers it found and
    # raises the signal again: with these no-ops there, a graceful stop returns (exit 0).
    quiet = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
      self._server.run(sockets=[sock])
    finally:
      for s, handler in quiet.items():
        signal.signal(s, handler)

  def start(self) -> int:
    """Serves from a background thread (tests, benchmarks); returns the port. See stop()."""
    sock = self._listen()
    self._thread = threading.Thread(
      target=self._server.run, kwargs={"sockets": [sock]}, name="gin-serve-http", daemon=True
    )
    self._thread.start()
    while not self._server.started and self._thread.is_alive():
      time.sleep(0.01)
    return self.port

  def stop(self) -> None:
    """Stops a start()ed server as SIGTERM would: in-flight requests are answered first."""
    self._server.should_exit = True
    self._thread.join()


def serve(options: ServeOptions) -> None:
  """`python -m gin_jax.serve`: serves until SIGTERM / SIGINT."""
  Service(options).run()
