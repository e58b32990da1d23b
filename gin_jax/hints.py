"""`did you mean ...?` for a misspelt flag, config field or name (difflib's closest match).

The floor of the package, like gin_jax.files: no jax, no other gin_jax module,
so the command lines' parsers and the config share it before jax is imported.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable


def closest(word: str, candidates: Iterable[str]) -> str | None:
  """The candidate nearest `word` (difflib.get_close_matches, ratio >= 0.6), or None."""
  close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
  return close[0] if close else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
  """`; did you mean X?` for the candidate nearest `word`, or '' when none is near."""
  match = closest(word, candidates)
  return f"; did you mean {match}?" if match else ""


class ArgumentParser(argparse.ArgumentParser):
  """argparse's parser, whose `unrecognized arguments` error names the nearest flag."""

  def error(self, message: str):
    found = re.match(r"unrecognized arguments: (\S+)", message)
    if found:
      flag = found.group(1).split("=", 1)[0]
      message += did_you_mean(flag, self.option_names())
    super().error(message)

  def parse_args(self, args=None, namespace=None):
    """argparse's, but an unknown `--flag` is named first (before `X is required`, say)."""
    names = self.option_names()
    for arg in sys.argv[1:] if args is None else args:
      flag = arg.split("=", 1)[0]
      if flag.startswith("--") and not any(n.startswith(flag) for n in names):  # prefixes pass
        self.error(f"unrecognized arguments: {arg}")
    return super().parse_args(args, namespace)

  def option_names(self) -> list[str]:
    """Every `--flag` of the parser."""
    return [s for a in self._actions for s in a.option_strings if s.startswith("--")]
