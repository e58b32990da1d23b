"""What a text file looks like, from its first lines: for the message of a wrong --format.

`looks_like(head)` -> (what the lines look like, the --format that reads them or None).
A guess from a few lines, used only to word an error, never to read a file.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(rb"-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")
_SEPARATORS = ((b",", "comma"), (b"\t", "tab"), (b";", "semicolon"), (b"|", "pipe"))
CRITEO_TOKENS = (40, 39)  # label, I1..I13, C1..C26; or the 39 features of unlabeled rows


def looks_like(head: list[bytes]) -> tuple[str, str | None]:
  """(a description of the first lines, the --format flags that read them, or None).

  Args:
    head: the file's first lines, without their line ends.
  """
  lines = [line.rstrip(b"\r") for line in head if line.strip()][:20]
  if not lines:
    return "empty lines", None
  first = lines[0]
  if first.startswith(b"PAR1"):
    return "a Parquet file", "--format parquet --schema FILE"
  if all(first.count(b"\t") + 1 in CRITEO_TOKENS for first in lines[:5]):
    return "Criteo TSV", "--format criteo"
  tokens = first.split()
  if len(tokens) > 1 and all(b":" in t for t in tokens[1:]) and b"," not in first:
    return "libfm rows (label idx:val ...)", "--format libfm"
  sep, name = max(_SEPARATORS, key=lambda s: first.count(s[0]))
  fields = first.count(sep) + 1
  if fields == 1:
    return f"one field per line ({_show(first)})", None
  cells = first.split(sep)
  shown = ", ".join(c.decode(errors="replace").strip() for c in cells[:4])
  shown += ", ..." if fields > 4 else ""
  if any(c.strip() and not _NUMBER.fullmatch(c.strip()) for c in cells):
    what = f"{name}-separated with a header ({shown}; {fields} columns)"
  else:
    what = f"{name}-separated numbers without a header ({fields} columns)"
  option = "" if sep == b"," else f" (the schema's separator: {sep.decode()!r})"
  return what, f"--format csv --schema FILE{option}"


def hint(head: list[bytes], asked: str) -> str:
  """`it looks <description>: try --format ...`, for the message of a wrong --format."""
  what, fits = looks_like(head)
  if fits is None or (fits.split()[1] == asked and "separator" not in fits):
    return f"it looks like {what}"
  return f"it looks like {what}: try {fits}"


def _show(line: bytes, limit: int = 40) -> str:
  text = line.decode(errors="replace")
  return repr(text if len(text) <= limit else text[:limit] + "...")
