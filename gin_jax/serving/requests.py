"""Predict request bodies (TF Serving's REST forms) -> one column of raw values per field.

  {"instances": [{FIELD: VALUE, ...}, ...]}            row form
  {"inputs": {FIELD: [VALUE, ...], ...}}               columnar form
  either with "context": {FIELD: VALUE, ...}           values shared by every instance

A field absent from a request, or null, is a missing value. Everything here checks
the body's shape (objects, lists, lengths, field names); the values themselves are
checked when they are encoded (gin_jax.data.formats.records). Every problem is a
RequestError with the HTTP status and one line naming the instance and field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import orjson

_KEYS = frozenset({"instances", "inputs", "context", "signature_name"})
_SIGNATURE = "serving_default"  # TF Serving's default signature: the only one here.


class RequestError(Exception):
  """A request answered with an error: HTTP `status` and a one-line message."""

  def __init__(self, status: int, message: str, headers: dict | None = None):
    super().__init__(message)
    self.status, self.message, self.headers = status, message, headers or {}


@dataclasses.dataclass
class Columns:
  """A request as columns of raw values, and the context every instance shares."""

  columns: dict[str, Sequence]  # Field -> its `rows` values (fields no instance has: absent).
  rows: int
  context: dict  # Field -> the one value of "context" (encoded once).


def parse_predict(body: bytes, fields: Sequence[str]) -> Columns:
  """Parses a predict body against a model's fields.

  Args:
    body: the request body (JSON).
    fields: the model's field names.

  Returns:
    Columns. Raises RequestError (400) for a malformed body or an unknown field.
  """
  try:
    req = orjson.loads(body)
  except orjson.JSONDecodeError as e:
    raise RequestError(400, f"the body is not JSON: {e}") from None
  if not isinstance(req, dict):
    raise RequestError(400, 'the body must be a JSON object with "instances" or "inputs"')
  unknown = sorted(set(req) - _KEYS)
  if unknown:
    raise RequestError(400, f"unknown key {unknown[0]!r}: a body has instances or inputs, "
                       "and may have context and signature_name")  # fmt: skip
  if req.get("signature_name", _SIGNATURE) != _SIGNATURE:
    raise RequestError(400, f"signature_name {req['signature_name']!r}: only {_SIGNATURE!r}")
  if ("instances" in req) == ("inputs" in req):
    raise RequestError(400, 'the body must have exactly one of "instances" and "inputs"')
  known = frozenset(fields)
  context = _context(req.get("context"), known)
  if "instances" in req:
    columns, rows = _rows(req["instances"], fields, known, context)
  else:
    columns, rows = _columns(req["inputs"], fields, known, context)
  return Columns(columns, rows, context)


def _unknown(where: str, name, known: frozenset[str]) -> RequestError:
  shown = ", ".join(sorted(known)[:8]) + (", ..." if len(known) > 8 else "")
  return RequestError(400, f"{where}: unknown field {name!r} (the model's fields: {shown})")


def _context(context, known: frozenset[str]) -> dict:
  if context is None:
    return {}
  if not isinstance(context, dict):
    raise RequestError(400, "context must be an object of field: value")
  for name in context:
    if name not in known:
      raise _unknown("context", name, known)
  return context


def _rows(instances, fields, known, context) -> tuple[dict[str, list], int]:
  if not isinstance(instances, list):
    raise RequestError(400, "instances must be a list of objects of field: value")
  for i, inst in enumerate(instances):
    if not isinstance(inst, dict):
      raise RequestError(400, f"instances[{i}] must be an object of field: value")
    if not inst.keys() <= known:
      raise _unknown(f"instances[{i}]", min(inst.keys() - known), known)
    if context and not inst.keys().isdisjoint(context):
      shared = min(inst.keys() & context.keys())
      raise RequestError(400, f"instances[{i}]: field {shared!r} is given in context too")
  given = set().union(*(inst.keys() for inst in instances)) if instances else set()
  columns = {name: [inst.get(name) for inst in instances] for name in fields if name in given}
  return columns, len(instances)


def _columns(inputs, fields, known, context) -> tuple[dict[str, list], int]:
  if not isinstance(inputs, dict):
    raise RequestError(400, "inputs must be an object of field: [value, ...]")
  rows = None
  for name, column in inputs.items():
    if name not in known:
      raise _unknown("inputs", name, known)
    if name in context:
      raise RequestError(400, f"inputs: field {name!r} is given in context too")
    if not isinstance(column, list):
      raise RequestError(
        400, f"inputs[{name!r}] must be a list (a value per instance); a value for every "
        "instance goes in context"
      )  # fmt: skip
    if rows is None:
      rows, first = len(column), name
    elif len(column) != rows:
      raise RequestError(
        400, f"inputs: {name!r} has {len(column)} values, {first!r} has {rows}"
      )  # fmt: skip
  if rows is None:
    raise RequestError(400, "inputs names no field: the number of instances is unknown")
  return dict(inputs), rows


def bad_value(bad: dict[int, str]) -> RequestError:
  """The 400 for the first bad value an encoding found (row -1: a context value)."""
  row = min(bad)
  where = "context" if row < 0 else f"instances[{row}]"
  return RequestError(400, f"{where}: {bad[row]}")
