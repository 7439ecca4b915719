"""A run's workdir: its config, checkpoints and outputs, written so that a later run never takes
a half-written workdir for a complete one.

  config.json            the resolved config (written first; later runs must match it)
  checkpoints/<stage>/   Orbax CheckpointManager directories (committed atomically by Orbax)
  metrics.json           written last and atomically: its presence means the outputs are complete
  predictions/<row>.jsonl, tvr_submission.json, submissions/<row>.tvr.json, tb/ (TensorBoard)
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import orbax.checkpoint as ocp
from absl import logging

from vsr_jax import config_lib

# Fields that may change between runs on one workdir: they change how a run is evaluated or
# logged, not what it trained.
MUTABLE_SECTIONS = ("eval", "index", "log", "mesh", "checkpoint")


class WorkdirError(ValueError):
  """A workdir that cannot be used as asked; the message names the file and the problem."""


def write_json(path: str, value) -> None:
  """Atomic JSON write (temporary file + rename)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)


def read_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise WorkdirError(f"{path}: corrupt JSON ({e}); the workdir is damaged") from None


def read_config(workdir: str):
  """The config a run was trained with (its config.json) over today's base_config: fields added
  since keep their defaults (an agent they change is then refused by its checkpoint's
  description, naming the field). Locked, as a loaded config is."""
  from vsr_jax import defaults   # pylint: disable=g-import-not-at-top (defaults imports data)
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise WorkdirError(f"{path} not found: there is no run in {workdir} (train one: make demo)")
  config = defaults.base_config()
  config.update(config_lib.from_dict(read_json(path)))
  config.lock()
  return config


def prepare(config, workdir: str, *, mode: str) -> None:
  """Creates the workdir or checks that it holds a run of this same config."""
  path = os.path.join(workdir, "config.json")
  current = config_lib.to_dict(config)
  if not os.path.exists(path):
    if mode == "eval":
      raise WorkdirError(f"{workdir} has no config.json: there is no run to evaluate there")
    os.makedirs(workdir, exist_ok=True)
    write_json(path, current)
    return
  saved = read_json(path)
  differ = config_lib.diff(saved, current)
  fixed = [f for f in differ if f.split(".")[0] not in MUTABLE_SECTIONS]
  if fixed:
    raise WorkdirError(
        f"{workdir} holds a run of a different config: {', '.join(fixed)} differ from "
        f"{path}. Use a new --workdir, or the same config.")
  if differ:
    logging.info("workdir %s: evaluation/logging fields changed: %s", workdir,
                 ", ".join(differ))


class Checkpoints:
  """One stage's checkpoints: the train state plus a JSON description of what made it."""

  def __init__(self, workdir: str, stage: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints", stage))
    self.stage = stage
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                             create=True))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state, description: dict, extra: dict | None = None) -> None:
    """extra: host-side arrays needed to resume exactly (restored as saved, no template)."""
    items = {"state": ocp.args.StandardSave(state),
             "description": ocp.args.JsonSave(description)}
    if extra:
      items["extra"] = ocp.args.StandardSave(extra)
    self.manager.save(step, args=ocp.args.Composite(**items))
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

  def restore(self, step: int, abstract_state, description: dict):
    """Restores into the shape of `abstract_state`; a checkpoint of another config is an error."""
    saved = self.description(step)
    differ = config_lib.diff(saved, description)
    if differ:
      raise WorkdirError(
          f"checkpoint {self.directory}/{step} was made with a different config: "
          f"{', '.join(differ)} differ; it cannot be restored into this run")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      return self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
    except Exception as e:
      raise WorkdirError(
          f"checkpoint {self.directory}/{step} does not fit this run's {self.stage} state "
          f"({e})") from None

  def close(self):
    self.manager.close()


def publish(workdir: str, staging: str) -> None:
  """Moves finished outputs from `staging` into the workdir, metrics.json last.

  metrics.json is removed first, so a crash in between leaves no metrics next to a mix of old
  and new outputs.
  """
  if not os.path.isfile(os.path.join(staging, "metrics.json")):
    raise WorkdirError(f"{staging} has no metrics.json: refusing to publish incomplete outputs")
  metrics = os.path.join(workdir, "metrics.json")
  if os.path.exists(metrics):
    os.remove(metrics)
  for name in sorted(os.listdir(staging)):
    if name == "metrics.json":
      continue
    target = os.path.join(workdir, name)
    if os.path.isdir(target):
      shutil.rmtree(target)
    os.replace(os.path.join(staging, name), target)
  os.replace(os.path.join(staging, "metrics.json"), metrics)
  shutil.rmtree(staging, ignore_errors=True)


def staging_dir(workdir: str) -> str:
  path = os.path.join(workdir, ".staging")
  shutil.rmtree(path, ignore_errors=True)
  os.makedirs(path)
  return path
