"""`--section.field=value` overrides and experiment files (YAML / JSON).

Kept hand-written rather than tyro or ml_collections' config flags: every
documented flag is a `--section.field=value` pair that argparse passes through
untouched, experiment files use the same names, and values parse by the
dataclass field's type. tyro would rebuild the command line (its own help,
`--model.embed-dim` spellings, no YAML sections); ml_collections' config_flags
needs absl's flag parser in place of the argparse entry points. Neither keeps
every flag working as written today.
"""

from __future__ import annotations

import dataclasses
import os
import typing

from gin_jax.config import yaml_files
from gin_jax.config.schema import ARCH_DEFAULTS, Config, DataConfig, ModelConfig, TrainConfig
from gin_jax.hints import closest, did_you_mean


def override(cfg: Config, assignments: dict[str, str]) -> Config:
  """Applies `{"section.field": "text"}` overrides, parsing text by field type.

  Args:
    cfg: the base config.
    assignments: dotted names (`model.embed_dim`, `train.batch_size`, or `name`)
      mapped to their textual values.

  Returns:
    A new Config. Raises ValueError naming an unknown field or a bad value.
  """
  sections = {}
  for key, text in assignments.items():
    section, _, name = key.partition(".")
    if not name:
      if section != "name":
        raise ValueError(
          f"unknown config field {key!r} (use section.field){did_you_mean(key, field_names())}"
        )
      cfg = dataclasses.replace(cfg, name=text)
      continue
    if section not in ("model", "data", "train"):
      raise ValueError(
        f"unknown config section {section!r} in {key!r}{did_you_mean(key, field_names())}"
      )
    sections.setdefault(section, {})[name] = text
  replaced = {}
  for section, values in sections.items():
    sub = getattr(cfg, section)
    hints = typing.get_type_hints(type(sub))
    known = {f.name for f in dataclasses.fields(sub)}
    parsed = {}
    for name, text in values.items():
      if name not in known:
        raise ValueError(f"unknown config field {section}.{name}" + _hint(section, name, known))
      parsed[name] = _parse(text, hints[name], f"{section}.{name}")
    if section == "model" and parsed.get("arch", sub.arch) != sub.arch:
      sub = dataclasses.replace(sub, **ARCH_DEFAULTS.get(parsed["arch"], {}))
    replaced[section] = dataclasses.replace(sub, **parsed)
  # One replace, so that checks across sections see every override at once.
  return dataclasses.replace(cfg, **replaced)


def field_names() -> list[str]:
  """Every config field as `section.field` (and `name`)."""
  sections = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
  return ["name"] + [f"{s}.{f.name}" for s, c in sections.items() for f in dataclasses.fields(c)]


def _hint(section: str, name: str, known) -> str:
  """`; did you mean x.y?`: the field of that name in another section, else the nearest
  field of the section, else of any section; else the section's fields."""
  elsewhere = [f for f in field_names() if f.endswith(f".{name}")]
  near = closest(name, known)
  anywhere = closest(name, [f.partition(".")[2] for f in field_names()])
  if elsewhere:
    return f"; did you mean {elsewhere[0]}?"
  if near is not None:
    return f"; did you mean {section}.{near}?"
  if anywhere is not None:
    return f"; did you mean {next(f for f in field_names() if f.endswith('.' + anywhere))}?"
  return f"; known: {sorted(known)}"


def load_file(path: str | os.PathLike) -> tuple[dict[str, str], str | None]:
  """Reads an experiment file (YAML or JSON): `model:`, `data:`, `train:` sections.

  The sections hold the same fields as the `--section.field=value` overrides;
  top-level `name` and `preset` are allowed too. Every key and value is checked
  here, so a mistake is reported with the file and key that hold it.

  Args:
    path: the .yaml / .yml / .json file.

  Returns:
    ({"section.field": text} assignments for `override`, the preset it names or None).
  """
  doc = yaml_files.load(path, "experiment file")
  if doc is None:
    doc = {}
  if not isinstance(doc, dict):
    raise ValueError(f"{path}: expected a mapping with model:, data:, train: sections")
  sections = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
  assignments, preset_name = {}, None
  for key, body in doc.items():
    if key in ("name", "preset"):
      if not isinstance(body, str):
        raise ValueError(f"{path}: {key} must be a string, got {yaml_files.short(body)}")
      if key == "name":
        assignments["name"] = body
      else:
        preset_name = body
      continue
    if key not in sections:
      raise ValueError(
        f"{path}: unknown key {key!r}; expected sections model, data, train (and name, preset)"
      )
    if not isinstance(body, dict):
      raise ValueError(f"{path}: section {key!r} must be a mapping of field: value")
    hints = typing.get_type_hints(sections[key])
    for name, value in body.items():
      if name not in hints:
        raise ValueError(f"{path}: unknown key {key}.{name}" + _hint(key, name, hints))
      nested = isinstance(value, list) and any(isinstance(v, list | dict) for v in value)
      if isinstance(value, dict) or nested:
        raise ValueError(
          f"{path}: {key}.{name} must be a value or a list of values, got {yaml_files.short(value)}"
        )
      text = _to_text(value)
      _parse(text, hints[name], f"{key}.{name} in {path}")
      assignments[f"{key}.{name}"] = text
  return assignments, preset_name


def _to_text(value) -> str:
  """A YAML value as the text a command-line override would carry."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if value is None:
    return "none"
  if isinstance(value, list | tuple):
    return ",".join(str(v) for v in value)
  return str(value)


def _parse(text: str, hint, where: str):
  spec = str(hint)
  try:
    if spec.startswith("tuple"):
      inner = float if "float" in spec else int
      return tuple(inner(t) for t in text.split(",") if t.strip())
    if hint is bool:
      if text.lower() in ("1", "true", "yes"):
        return True
      if text.lower() in ("0", "false", "no"):
        return False
      raise ValueError(text)
    if "None" in spec and text.lower() in ("none", "auto", ""):
      return None  # an optional field: None (for batch_size and embedding_l2: auto)
    base = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    if base[0] is int:
      return int(text)
    if base[0] is float:
      return float(text)
    return text
  except ValueError:
    raise ValueError(f"bad value {text!r} for {where} ({spec})") from None
