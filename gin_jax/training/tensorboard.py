"""TensorBoard scalars of a run, in WORKDIR/tensorboard/ next to metrics.jsonl.

ScalarWriter is report.MetricsLog's scalar sink: each metrics record becomes scalars
at the record's global step (steps run on across the stages):

  record                      scalars
  a train line (no "event")   train/loss, train/grad_norm, train/learning_rate,
                              train/samples_per_s
  event "eval" (each epoch)   <split>/auc, <split>/logloss (e.g. valid/auc)
  event "stage_end"           <stage>/<split>_auc, <stage>/<split>_logloss: the
                              stage's best weights on valid and test

Other numeric fields of a record go under the same prefix by their own names. The
files are written with tensorboardX (small, no TensorFlow); view them with
`tensorboard --logdir runs/` (tensorboard itself is not a dependency) or read them
back with read_scalars.
"""

from __future__ import annotations

import glob
import os
import struct
import weakref

_NOT_SCALARS = {"stage", "event", "split", "step", "epoch"}
_TAGS = {"lr": "learning_rate"}  # metrics.jsonl's short names -> TensorBoard tags.
_STAGE_END = ("_auc", "_logloss")  # Of a stage_end record's fields, the evaluations.


class ScalarWriter:
  """Writes metrics records as TensorBoard scalars (see the module docstring)."""

  def __init__(self, logdir: str | os.PathLike):
    from tensorboardX import SummaryWriter  # Local: only runs that write scalars pay for it.

    self.logdir = os.fspath(logdir)
    self._writer = SummaryWriter(self.logdir)
    # Closed when the writer is collected (the trainer does not close its logs).
    self._closer = weakref.finalize(self, self._writer.close)

  def __call__(self, record: dict) -> None:
    """Writes the scalars of one record, then flushes (records are seconds apart)."""
    step = record.get("step")
    for tag, value in scalars_of(record).items():
      self._writer.add_scalar(tag, value, step)
    self._writer.flush()

  def close(self) -> None:
    self._closer()


def scalars_of(record: dict) -> dict[str, float]:
  """{tag: value} of one metrics record (see the module docstring)."""
  event = record.get("event")
  if event == "eval":
    prefix = record.get("split", "eval")
  elif event is None:
    prefix = "train"
  else:
    prefix = record.get("stage", event)
  out = {}
  for key, value in record.items():
    if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, int | float):
      continue
    if event == "stage_end" and not key.endswith(_STAGE_END):
      continue  # epochs and seconds: bookkeeping, not curves.
    out[f"{prefix}/{_TAGS.get(key, key)}"] = float(value)
  return out


def read_scalars(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
  """The scalars of every event file in logdir: {tag: [(step, value), ...]} in file order.

  Reads the TFRecord files with tensorboardX's protobufs (no TensorFlow or tensorboard
  needed); for tests and scripts. Values are float32, as TensorBoard stores them.
  """
  from tensorboardX.proto import event_pb2

  out: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(glob.glob(os.path.join(os.fspath(logdir), "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      while header := f.read(12):  # uint64 length, uint32 CRC of the length.
        (length,) = struct.unpack("<Q", header[:8])
        event = event_pb2.Event.FromString(f.read(length))
        f.read(4)  # CRC of the data.
        for value in event.summary.value:
          if value.HasField("simple_value"):
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out
