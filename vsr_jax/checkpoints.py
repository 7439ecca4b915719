"""A stage's Orbax checkpoints: the train state plus a JSON description of what made it.

Whether a checkpoint fits a run is decided by what its parameters mean, not by the whole
config of the code that wrote it: the stored state's structure and shapes (Orbax restores into
the run's abstract state) plus a short explicit list of meaning-changing config fields per
stage (`Stage.meaning`), stored in the description. A field the writing code did not have
takes today's default; a refusal names the field and both values. So a field added later,
whose default keeps the old behaviour, never orphans a checkpoint.

Integrity: every checkpoint's description holds the signature (path, shape, dtype of every
leaf) and a SHA-256 of its state's arrays, computed from the host copy at save time. Restoring
checks the signature's paths and shapes first (another structure: "does not fit", naming the
leaf) and the digest
after (a checkpoint that Orbax cannot read although its structure fits, or whose arrays differ
from what was written: DamagedCheckpoint). A run resumes from the newest intact step of a loop
(`restore_intact`), moving damaged steps aside into checkpoints/<name>.damaged/.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from vsr_jax import config_lib, hosts
from vsr_jax.workdir import WorkdirError


class DamagedCheckpoint(WorkdirError):
  """A checkpoint whose files cannot be read or whose arrays are not those written."""


def signature(state) -> list:
  """[path, shape, dtype] of every leaf (arrays or abstract ShapeDtypeStructs alike)."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)   # as a restore sees it
  return [[jax.tree_util.keystr(path), list(np.shape(leaf)),
           str(np.dtype(getattr(leaf, "dtype", None) or np.asarray(leaf).dtype))]
          for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]]


def digest(host_state, dtypes=None) -> str:
  """SHA-256 of the leaves' bytes in tree order (host numpy arrays), each cast to `dtypes`
  (the saved signature's: a restore may cast, e.g. into a python int step) when given."""
  h = hashlib.sha256()
  leaves = jax.tree.leaves(host_state)
  for i, leaf in enumerate(leaves):
    a = np.asarray(leaf)
    if dtypes is not None:
      a = a.astype(dtypes[i], copy=False)
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _first_difference(saved: list, current: list) -> str:
  saved_by, current_by = {p: rest for p, *rest in saved}, {p: rest for p, *rest in current}
  for path in sorted(set(saved_by) | set(current_by)):
    a, b = saved_by.get(path), current_by.get(path)
    if a is None or b is None or a[0] != b[0]:
      return (f"{path}: checkpoint {'absent' if a is None else f'{a[1]}{a[0]}'}, this run "
              f"{'absent' if b is None else f'{b[1]}{b[0]}'}")
  return "the leaves' order"


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
    # The digest of what is written, from a host copy made now (the state may be donated as
    # soon as this returns).
    description = dict(description, integrity={"signature": signature(state),
                                                "sha256": digest(hosts.fetch(state))})
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
    if not os.path.isdir(os.path.join(self.directory, str(step))):
      raise WorkdirError(f"checkpoint {self.directory}/{step}: no such step (steps: "
                         f"{self.all_steps() or 'none'})")
    try:
      return self.manager.restore(
          step, args=ocp.args.Composite(description=ocp.args.JsonRestore())).description
    except Exception as e:  # Orbax raises many types for damaged files
      raise DamagedCheckpoint(
          f"checkpoint {self.directory}/{step} is damaged: its description is unreadable or "
          f"incomplete ({_short(e)})") from None

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
    integrity = saved.get("integrity")      # (absent in checkpoints of older code)
    # Structure and shapes must agree (dtypes are cast by Orbax, as a python int step is).
    shapes = lambda sig: [leaf[:2] for leaf in sig]
    if integrity and shapes(integrity["signature"]) != shapes(signature(target)):
      raise WorkdirError(
          f"checkpoint {self.directory}/{step} does not fit this run's {self.name} state "
          "(another structure or shapes): "
          + _first_difference(integrity["signature"], signature(target)))
    try:
      state = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
    except Exception as e:
      if integrity:      # the structure fits: the files are what is wrong
        raise DamagedCheckpoint(f"checkpoint {self.directory}/{step} is damaged: Orbax cannot "
                                f"read it ({_short(e)})") from None
      raise WorkdirError(
          f"checkpoint {self.directory}/{step} does not fit this run's {self.name} state: its "
          f"parameters have another structure or shapes ({_short(e)})") from None
    dtypes = [np.dtype(leaf[2]) for leaf in integrity["signature"]] if integrity else None
    if integrity and digest(hosts.fetch(state), dtypes) != integrity["sha256"]:
      raise DamagedCheckpoint(f"checkpoint {self.directory}/{step} is damaged: its arrays "
                              "differ from the digest written with them")
    return state

  def restore_intact(self, abstract_state, description: dict):
    """(step, state) of the newest intact checkpoint, or (None, abstract_state) when there is
    none. Damaged ones are moved aside with a one-line warning each; when every one is
    damaged, DamagedCheckpoint names them (nothing is called good)."""
    damaged = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return step, self.restore(step, abstract_state, description)
      except DamagedCheckpoint as e:
        logging.warning("%s; moved aside, trying an earlier step", e)
        damaged.append(str(e))
        self._quarantine(step)
    if damaged:
      raise DamagedCheckpoint(
          f"every checkpoint of {self.name} is damaged ({len(damaged)}; moved to "
          f"{self.directory}.damaged/): {damaged[0]}; the stage retrains from its start if "
          "run again")
    return None, abstract_state

  def _quarantine(self, step: int) -> None:
    """Moves step's folder to <folder>.damaged/<step>-<time> (kept for inspection; Orbax no
    longer lists it, and the step can be written again)."""
    def move():
      aside = f"{self.directory}.damaged"
      os.makedirs(aside, exist_ok=True)
      os.replace(os.path.join(self.directory, str(step)),
                 os.path.join(aside, f"{step}-{int(time.time())}"))
    hosts.on_primary(move, f"quarantine {self.name}/{step}")
    self.manager.reload()

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


def _short(e: Exception, limit: int = 300) -> str:
  """An exception in one short line (Orbax's messages run to pages)."""
  text = " ".join(f"{type(e).__name__}: {e}".split())
  return text if len(text) <= limit else text[:limit] + " ..."
