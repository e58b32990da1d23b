"""The versions of a model base path: which one serves, loading new ones, swapping them in.

The base path holds numbered versions (BASE/1, BASE/2, ...; scoring.export_version
writes them whole). The server serves the highest version that verifies and loads:
a newer one is read, checked against its seal, compiled and warmed up beside the
serving one, then swapped in by one reference assignment, so a request is encoded
and scored by one version whatever happens meanwhile. A version that fails is
logged once and skipped while the serving one goes on; it is tried again only when
its files change (a copy still under way). If the serving version's directory is
removed, the highest remaining one is loaded in its place (a rollback).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gin_jax.scoring import ScoringError, versions
from gin_jax.serving.model import ServedVersion

# TF Serving's version states and error codes (GET /v1/models/NAME).
LOADING, AVAILABLE, END = "LOADING", "AVAILABLE", "END"


@dataclasses.dataclass
class VersionState:
  """What GET /v1/models/NAME reports of one version."""

  state: str
  error_code: str = "OK"
  error_message: str = ""


def _signature(directory: Path) -> tuple:
  """The names, sizes and modification times of a version's files: changes while it is copied."""
  out = []
  for root, _, names in os.walk(directory):
    for name in sorted(names):
      try:
        st = os.stat(os.path.join(root, name))
      except OSError:
        continue
      out.append((os.path.join(root, name), st.st_size, st.st_mtime_ns))
  return tuple(sorted(out))


class VersionManager:
  """Polls a model base path and keeps the served version current.

  Args:
    base: the model base path.
    sizes: the batch sizes each version compiles.
    log: prints one line (the server's log).
    on_swap: called with the new ServedVersion after each swap (metrics).
  """

  def __init__(self, base, sizes, log: Callable[[str], None], on_swap=None):
    self.base = Path(base)
    self.sizes = tuple(sizes)
    self.current: ServedVersion | None = None
    self.states: dict[int, VersionState] = {}
    self._failed: dict[int, tuple] = {}  # Version -> the signature it failed with.
    self._said: dict[int, str] = {}  # Version -> the failure last logged.
    self._log = log
    self._on_swap = on_swap or (lambda v: None)
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def poll(self) -> ServedVersion | None:
    """Loads and swaps in the version that should serve, if it is not serving; returns current.

    Tries the present versions from the highest down: the serving one (nothing to
    do), or one that loads (swapped in); one that failed before with the same files
    is skipped.
    """
    present = versions(self.base)
    serving = self.current.version if self.current is not None else None
    for v in reversed(present):
      if v == serving:
        break
      directory = self.base / str(v)
      signature = _signature(directory)
      if self._failed.get(v) == signature:
        continue
      if serving is not None and v < serving and serving in present:
        break  # Never step back while the serving version is still there.
      if self._load(v, directory, signature):
        break
    for v in list(self.states):
      if v not in present and (self.current is None or v != self.current.version):
        del self.states[v]
        self._failed.pop(v, None)
        self._said.pop(v, None)
    return self.current

  def _load(self, v: int, directory: Path, signature: tuple) -> bool:
    self.states[v] = VersionState(LOADING)
    try:
      loaded = ServedVersion(v, directory, self.sizes)
    except Exception as e:  # noqa: BLE001 - any version that fails is skipped, never fatal
      self._failed[v] = signature
      message = " ".join(str(e).split())
      if not isinstance(e, ScoringError | OSError | ValueError):
        message = f"{type(e).__name__}: {message}"
      if self._said.get(v) != message:
        self._log(f"version {v} skipped: {message}")  # Once, not at every poll.
        self._said[v] = message
      self.states[v] = VersionState(END, "UNKNOWN", message)
      return False
    old, self.current = self.current, loaded  # The swap: one reference assignment.
    self.states[v] = VersionState(AVAILABLE)
    if old is not None:
      self.states[old.version] = VersionState(END)
    self._on_swap(loaded)
    self._log(
      f"serving version {v} ({directory}; loaded, compiled {len(self.sizes)} batch sizes "
      f"and warmed up in {loaded.load_seconds:.1f} s)"
    )
    return True

  def start(self, every_s: float) -> None:
    """Polls now, then every `every_s` seconds, in a background thread until stop()."""

    def loop():
      while True:
        try:
          self.poll()
        except Exception as e:  # noqa: BLE001 - the poller must outlive a bad version
          self._log(f"polling {self.base} failed: {type(e).__name__}: {e}")
        if self._stop.wait(every_s):
          return

    self._thread = threading.Thread(target=loop, name="gin-serve-poller", daemon=True)
    self._thread.start()

  def stop(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()

  def status(self) -> list[dict]:
    """model_version_status of GET /v1/models/NAME, highest version first."""
    return [
      {
        "version": str(v),
        "state": s.state,
        "status": {"error_code": s.error_code, "error_message": s.error_message},
      }
      for v, s in sorted(self.states.items(), reverse=True)
    ]


def wait_for_first(manager: VersionManager, timeout_s: float) -> ServedVersion | None:
  """Polls until a version serves or timeout_s passes (start-up)."""
  deadline = time.monotonic() + timeout_s
  while manager.poll() is None and time.monotonic() < deadline:
    time.sleep(0.2)
  return manager.current
