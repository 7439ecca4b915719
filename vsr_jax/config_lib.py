"""Configs: loading `file.py[:arg]`, applying overrides, checking fields.

Config files live in `configs/` and define `get_config(arg) -> ml_collections.ConfigDict`
(big_vision style). The command line reads them through `ml_collections.config_flags`
(vsr_jax/main.py); the functions here load them from code (tests, sweeps, the notebook API),
apply overrides given as text (`apply_overrides`) or as values (`set_values`, a sweep point's
dict), and explain a bad override in one line with a suggestion (`explain`). The resolved
config is the one source of truth of a run: it is written to `config.json` in the workdir and
compared on every later run there.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from typing import Any, Iterable

import ml_collections


class InputError(ValueError):
  """Bad input (a config, a workdir, a data file): the message names the file, record or field
  and what was expected. The command line prints it as one line; any other exception keeps its
  traceback."""


class ConfigError(InputError):
  """A config file, preset, field or value that cannot be used."""


def load_module(path: str, prefix: str):
  """The Python file at `path` as a module (config and sweep files are files, not modules)."""
  module_spec = importlib.util.spec_from_file_location(
      prefix + os.path.basename(path).removesuffix(".py"), path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/file.py[:arg]` and returns its locked config."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist (from --config={spec}).")
  module = load_module(path, "vsr_config_")
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} defines no get_config(arg).")
  config = module.get_config(arg or None)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict.")
  config.lock()
  return config


def check_preset(arg: str | None, presets: Iterable[str], path: str) -> str:
  """Returns the preset name, or raises naming the known ones."""
  presets = tuple(presets)
  name = arg or "default"
  if name not in presets:
    hint = difflib.get_close_matches(name, presets, n=1)
    raise ConfigError(
        f"{path}: unknown preset {name!r}; known presets: {', '.join(presets)}"
        + (f" (did you mean {hint[0]!r}?)" if hint else ""))
  return name


def _field_names(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  names = []
  for key, value in config.items():
    names.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      names.extend(_field_names(value, prefix + key + "."))
  return names


def _parse_value(path: str, text: str, current: Any) -> Any:
  """Parses an override string to the type of the field it replaces."""
  if isinstance(current, str):
    return text
  if isinstance(current, bool):
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise ConfigError(f"--config.{path}={text}: expected a bool (true/false).")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise ConfigError(
        f"--config.{path}={text}: expected a {type(current).__name__}, got text that is not a "
        "Python literal.") from None
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(value, bool) and not isinstance(current, bool):
    raise ConfigError(f"--config.{path}={text}: expected a {type(current).__name__}, got a bool.")
  if current is not None and not isinstance(value, type(current)):
    raise ConfigError(
        f"--config.{path}={text}: expected a {type(current).__name__}, got "
        f"{type(value).__name__}.")
  return value


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, str]) -> ml_collections.ConfigDict:
  """Applies {'a.b': 'value'} overrides (text, as on the command line); a misspelt field is an
  error with a suggestion."""
  for path, text in overrides.items():
    node, leaf = _node(config, path, "--config.")
    if isinstance(node[leaf], ml_collections.ConfigDict):
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = None
      if not isinstance(value, dict):
        raise ConfigError(f"--config.{path}: is a section; give a dict literal or set one of "
                          "its fields")
      value = ml_collections.ConfigDict(value)
    else:
      value = _parse_value(path, text, node[leaf])
    with node.unlocked():
      node[leaf] = value
  return config


def _node(config: ml_collections.ConfigDict, path: str, where: str):
  """(parent section, leaf name) of field `path`; a misspelt name is an error with a hint."""
  known = _field_names(config)
  node = config
  parts = path.split(".")
  for depth, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      hint = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
      at = ".".join(parts[:depth]) or "the top level"
      raise ConfigError(f"{where}{path}: no field {part!r} in {at}"
                        + (f" (did you mean {where}{hint[0]}?)" if hint else ""))
    if depth < len(parts) - 1:
      node = node[part]
  return node, parts[-1]


def set_values(config: ml_collections.ConfigDict, values: dict[str, Any],
               where: str = "") -> ml_collections.ConfigDict:
  """Sets {'a.b': value} (Python values, as a sweep file gives them) with the checks of the
  command line: the field exists (else a suggestion) and the value has its type. `where`
  prefixes the messages (e.g. 'sweep point n4: ')."""
  for path, value in values.items():
    try:
      node, leaf = _node(config, path, "")
    except ConfigError as e:
      raise ConfigError(f"{where}{e}") from None
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
      if not isinstance(value, (dict, ml_collections.ConfigDict)):
        raise ConfigError(f"{where}{path}={value!r}: is a section; expected a dict")
      value = ml_collections.ConfigDict(dict(value))
    else:
      if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
      if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
      if (isinstance(value, bool) != isinstance(current, bool) or
          (current is not None and not isinstance(value, type(current)))):
        raise ConfigError(f"{where}{path}={value!r}: expected a {type(current).__name__}, got "
                          f"{type(value).__name__}")
    with node.unlocked():
      node[leaf] = value
  return config


def explain(spec: str, overrides: dict[str, str]) -> str | None:
  """Why `--config=spec` with these `--config.a.b=text` flags cannot load, as one line (a
  missing file, an unknown preset, a misspelt field, a value of the wrong type); None when
  they load (the failure was elsewhere)."""
  if not spec:
    return None
  try:
    load(spec, overrides)
  except InputError as e:
    return str(e)
  return None


def load(spec: str, overrides: dict[str, str] | None = None) -> ml_collections.ConfigDict:
  config = load_config_file(spec)
  return apply_overrides(config, overrides or {})


def to_dict(config: ml_collections.ConfigDict) -> dict:
  """A plain JSON-able dict (tuples become lists)."""
  return json.loads(config.to_json())


def from_dict(values: dict) -> ml_collections.ConfigDict:
  """Inverse of to_dict, restoring tuples for list-valued fields."""
  def convert(value):
    if isinstance(value, dict):
      return ml_collections.ConfigDict({k: convert(v) for k, v in value.items()})
    if isinstance(value, list):
      return tuple(convert(v) for v in value)
    return value
  config = convert(values)
  config.lock()
  return config


def diff(a: dict, b: dict, prefix: str = "") -> list[str]:
  """Field paths whose values differ between two plain config dicts."""
  out = []
  for key in sorted(set(a) | set(b)):
    path = prefix + key
    if key not in a or key not in b:
      out.append(path)
    elif isinstance(a[key], dict) and isinstance(b[key], dict):
      out.extend(diff(a[key], b[key], path + "."))
    elif a[key] != b[key]:
      out.append(path)
  return out
