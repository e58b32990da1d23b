"""Reading the YAML / JSON files users hand over (experiment files, schemas), bounded.

A YAML file is the user's input: it is read with a loader that refuses what can
make a small file expensive or ambiguous. No aliases (`*name`: ten nested
aliases in a 1 KB file expand to billions of nodes), no duplicate keys (a
second `train:` would silently replace the first), at most MAX_FILE_BYTES,
UTF-8 text, collections nested at most MAX_DEPTH deep (the parser recurses
per level: 1,000 `[` in 2 KB were a RecursionError). Every error is one line
that names the file (and the line).
"""

from __future__ import annotations

import os

import yaml

MAX_FILE_BYTES = 1 << 20  # An experiment file or a schema is a few hundred bytes.
MAX_DEPTH = 32  # Nesting of lists and mappings; these files need 3 or 4 levels.


class _TooDeep(yaml.YAMLError):
  def __init__(self, mark):
    super().__init__()
    self.mark = mark


class _BoundedLoader(yaml.SafeLoader):
  """yaml.SafeLoader without aliases and with duplicate keys refused."""

  def compose_node(self, parent, index):
    if self.check_event(yaml.AliasEvent):
      event = self.peek_event()
      raise yaml.MarkedYAMLError(
        problem=f"an alias (*{event.anchor}) is not allowed here", problem_mark=event.start_mark
      )
    if not self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
      return super().compose_node(parent, index)
    self._depth = getattr(self, "_depth", 0) + 1  # composing recurses once per level
    try:
      if self._depth > MAX_DEPTH:
        raise _TooDeep(self.peek_event().start_mark)
      return super().compose_node(parent, index)
    finally:
      self._depth -= 1

  def construct_mapping(self, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
      key = self.construct_object(key_node, deep=deep)
      if isinstance(key, str | int | float | bool) and key in seen:
        raise yaml.MarkedYAMLError(
          problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark
        )
      seen.add(key)
    return super().construct_mapping(node, deep)


def load(path: str | os.PathLike, what: str = "file", invalid: str = "not valid YAML"):
  """The parsed YAML (or JSON) document of `path`; ValueError in one line naming it.

  Args:
    path: the file.
    what: what the file is, for messages ("experiment file", "schema").
    invalid: how a syntax error's message begins.
  """
  try:
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
      raise ValueError(f"{path}: {size:,} bytes; {what}s are limited to {MAX_FILE_BYTES:,} bytes")
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ValueError(f"{path}: cannot read the {what} ({e.strerror})") from None
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(
      f"{path}: not a text {what} (byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8)"
    ) from None
  try:
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
  except _TooDeep as e:
    raise ValueError(
      f"{path}: nested deeper than {MAX_DEPTH} levels (line {e.mark.line + 1}); {what}s need a few"
    ) from None
  except yaml.MarkedYAMLError as e:
    mark = e.problem_mark or e.context_mark
    line = f"line {mark.line + 1}: " if mark is not None else ""
    problem = " ".join(str(x) for x in (e.context, e.problem) if x)
    raise ValueError(f"{path}: {invalid} ({line}{problem})") from None
  except yaml.YAMLError as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"{path}: {invalid} ({first})") from None


def short(value, limit: int = 60) -> str:
  """repr(value) cut to `limit` characters, for messages about a user's value."""
  text = repr(value)
  return text if len(text) <= limit else text[: limit - 3] + "..."
