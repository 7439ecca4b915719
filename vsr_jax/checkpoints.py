"""A stage's Orbax checkpoints: the train state plus a JSON description of what made it.

Whether a checkpoint fits a run is decided by what its parameters mean, not by the whole
config of the code that wrote it: the stored state's structure and shapes (Orbax restores into
the run's abstract state) plus a short explicit list of meaning-changing config fields per
stage (`Stage.meaning`), stored in the description. A field the writing code did not have
takes today's default; a refusal names the field and both values. So a field added later,
whose default keeps the old behaviour, never orphans a checkpoint.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from vsr_jax import config_lib
from vsr_jax.workdir import WorkdirError


def field_value(config, path: str):
  """config's value at 'a.b.c' (a ConfigDict or a plain dict); KeyError when absent."""
  node = config
  for part in path.split("."):
    node = node[part]
  return config_lib.to_dict(node) if hasattr(node, "to_json") else node


def _plain(value):
  """JSON's view of a value (tuples as lists), so stored and current values compare equal."""
  return json.loads(json.dumps(value))


def describe(config, stage: str, meaning: tuple[str, ...], **extra) -> dict:
  """The description stored with a checkpoint: its stage and its meaning-changing fields."""
  return {"stage": stage, "fields": {f: _plain(field_value(config, f)) for f in meaning},
          **extra}


def _legacy_fields(saved: dict) -> dict:
  """Fields of a description written before `fields` existed (whole config sections)."""
  flat = {}

  def walk(prefix, node):
    for key, value in node.items():
      if isinstance(value, dict):
        walk(f"{prefix}{key}.", value)
      else:
        flat[prefix + key] = value

  engine = saved.get("engine", {}) if "agent" in saved else saved   # agents nest the engine's
  walk("engine.", engine.get("engine", {}))
  for key in ("agent", "sft", "grpo"):
    if isinstance(saved.get(key), dict):
      walk(f"{key}.", saved[key])
  if "refine" in saved:
    flat["agent.refine"] = saved["refine"]
  for key, path in (("seed", "seed"), ("max_query_len", "data.max_query_len"),
                    ("feature_dim", "data.feature_dim")):
    if key in engine:
      flat[path] = engine[key]
  return flat


def incompatible(saved: dict, current: dict, defaults) -> list[str]:
  """'field: checkpoint X, this run Y' for each meaning-changing field that differs.

  saved/current: descriptions; a field missing from the saved one takes its value in
  `defaults` (the run's config over today's base config: the code that wrote it did not have
  the field yet, or did not store it).
  """
  stored = saved.get("fields")
  if stored is None:
    stored = _legacy_fields(saved)
  out = []
  for field, value in current["fields"].items():
    if field in stored:
      old = stored[field]
    else:
      try:
        old = _plain(field_value(defaults, field))
      except KeyError:
        old = None
    if old != value:
      out.append(f"{field}: checkpoint {old!r}, this run {value!r}")
  return out


class Checkpoints:
  """One stage's checkpoint folder (checkpoints/<name> in a workdir)."""

  def __init__(self, workdir: str, name: str, max_to_keep: int = 2, *, create: bool = True):
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints", name))
    self.name = name
    # Asynchronous: save() returns once the state is on the host; Orbax writes it to a
    # temporary folder in the background and renames it when complete (atomic as before).
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=create, enable_async_checkpointing=True))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, description: dict, extra: dict | None = None) -> None:
    """Starts saving `step` and returns once `state` is copied off the device (it may then be
    donated); the files are written in the background. A failed write is raised by the next
    save, wait() or close(). extra: host-side arrays needed to resume exactly (restored as
    saved, no template; never changed in place afterwards)."""
    items = {"state": ocp.args.StandardSave(state),
             "description": ocp.args.JsonSave(description)}
    if extra:
      items["extra"] = ocp.args.StandardSave(extra)
    self.manager.save(step, args=ocp.args.Composite(**items))

  def wait(self) -> None:
    """Blocks until the last save is on disk; raises its error if it failed."""
    self.manager.wait_until_finished()

  def restore_extra(self, step: int) -> dict:
    if not os.path.isdir(os.path.join(self.directory, str(step), "extra")):
      return {}
    try:
      return self.manager.restore(
          step, args=ocp.args.Composite(extra=ocp.args.StandardRestore())).extra
    except Exception as e:
      raise WorkdirError(
          f"checkpoint {self.directory}/{step}: unreadable resume data ({e})") from None

  def description(self, step: int) -> dict:
    try:
      return self.manager.restore(
          step, args=ocp.args.Composite(description=ocp.args.JsonRestore())).description
    except Exception as e:  # Orbax raises many types for damaged files
      raise WorkdirError(
          f"checkpoint {self.directory}/{step} is unreadable or incomplete ({e})") from None

  def restore(self, step: int, abstract_state, description: dict, defaults=None):
    """Restores into the shape of `abstract_state`; a checkpoint whose parameters mean
    something else (a meaning-changing field differs) or have another structure is refused."""
    saved = self.description(step)
    differ = incompatible(saved, description, defaults or self._fallback())
    if differ:
      raise WorkdirError(
          f"checkpoint {self.directory}/{step} was trained with other meaning-changing "
          f"fields ({'; '.join(differ)}); it cannot be restored into this run")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      return self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
    except Exception as e:
      raise WorkdirError(
          f"checkpoint {self.directory}/{step} does not fit this run's {self.name} state: its "
          f"parameters have another structure or shapes ({e})") from None

  def _fallback(self):
    """Where a description lacks a field: the run's own config.json (what the code that wrote
    it had; descriptions before `fields` stored no data.* fields), over today's defaults (for
    fields added since)."""
    from vsr_jax import defaults, workdir   # pylint: disable=g-import-not-at-top
    if os.path.isfile(os.path.join(self.workdir, "config.json")):
      return workdir.read_config(self.workdir)
    return defaults.base_config()

  def close(self):
    """Waits for the last save (raising its error) and releases Orbax's threads."""
    self.manager.close()
