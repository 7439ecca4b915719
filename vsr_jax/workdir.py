"""A run's workdir: its config, checkpoints and outputs, written so that a later run never takes
a half-written workdir for a complete one.

  config.json            the resolved config (written first; later runs must match it)
  checkpoints/<stage>/   Orbax CheckpointManager directories (vsr_jax/checkpoints.py)
  metrics.json           written last and atomically: its presence means the outputs are complete
  log.txt                every log line of the runs on it, with the tracebacks of background
                         threads (Orbax's savers) that the terminal does not show
  predictions/<row>.jsonl, tvr_submission.json, submissions/<row>.tvr.json, tb/ (TensorBoard)
  evals/<name>/          `--mode=eval --eval_name=NAME`: the same outputs (and the eval's own
                         config.json) for another evaluation of the run, never over its own
"""

from __future__ import annotations

import errno
import glob
import json
import logging as py_logging
import os
import re
import shutil
import sys
import threading
import warnings

from absl import logging

from vsr_jax import config_lib

# Fields that may change between runs on one workdir: they change how a run is evaluated or
# logged, not what it trained.
MUTABLE_SECTIONS = ("eval", "index", "log", "mesh", "checkpoint")
# Fields outside those sections that only change where data lives while a run reads it.
MUTABLE_FIELDS = ("data.features_on_disk",)
# What evaluation reads besides those sections: an evaluation may change these and only these
# (anything else is a training field: --mode=eval refuses to override it).
# (Not data.dir: another folder is another dataset, whose word vocabulary would remap the
# run's token ids.)
EVAL_FIELDS = ("eval", "index", "log", "mesh", "checkpoint", "data.eval_split", "imports",
               "rollout", *MUTABLE_FIELDS)
# Fields renamed since a run was written: old path -> new path (read_config moves them).
RENAMED = {"agent.turns": "eval.turns"}
# Fields added since, whose default changes what a run's checkpoints mean: a saved config
# without the field was trained with this value (not today's default).
ADDED = {"agent.span_prior": 0.0}
# Sections keyed by the run's own names: taken whole from a saved config.
NAMED_SECTIONS = ("eval.rows", "grpo.rewards")


class WorkdirError(config_lib.InputError):
  """A workdir that cannot be used as asked; the message names the file and the problem."""


def write_json(path: str, value) -> None:
  """Atomic JSON write (temporary file + rename). A failed write removes its temporary file
  and names it in the OSError (a buffered write's error, e.g. a full disk, names no file)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(value, f, indent=1)
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    if e.filename is None:
      e.filename = tmp
    raise
  os.replace(tmp, path)


def read_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise WorkdirError(f"{path}: corrupt JSON ({e}); the workdir is damaged") from None


def is_eval_field(path: str) -> bool:
  return any(path == f or path.startswith(f + ".") for f in EVAL_FIELDS)


def overlay(saved: dict):
  """Today's base_config with a run's saved values on top: fields added since keep their
  defaults, or the value runs had before them (ADDED), and a checkpoint they change the meaning
  of is refused by its description, naming the field; renamed fields move; fields the code no
  longer has are dropped, with a warning."""
  from vsr_jax import defaults   # pylint: disable=g-import-not-at-top (defaults imports data)
  config = defaults.base_config()
  flat = {}

  def walk(prefix, node):
    for key, value in node.items():
      path = prefix + key
      if isinstance(value, dict) and path not in NAMED_SECTIONS:
        walk(path + ".", value)
      else:
        flat[RENAMED.get(path, path)] = value

  walk("", saved)
  for path, value in ADDED.items():
    flat.setdefault(path, value)
  dropped = []
  for path, value in flat.items():
    parent, _, leaf = path.rpartition(".")
    node = config
    try:
      for part in parent.split(".") if parent else ():
        node = node[part]
      current = node[leaf]
    except (KeyError, AttributeError):
      dropped.append(path)
      continue
    if path == "eval.rows" and isinstance(value, list):
      # Written when rows were a tuple of built-in names: those rows as defined today.
      value = {name: config_lib.to_dict(current)[name] for name in value if name in current}
    node[leaf] = config_lib.from_dict({"x": value}).x
    if hasattr(current, "to_json"):
      node[leaf].unlock()
  if dropped:
    logging.warning("fields of a saved config that this code no longer has, ignored: %s",
                    ", ".join(dropped))
  config.lock()
  return config


def read_config(workdir: str):
  """The config a run was trained with (its config.json) over today's defaults (`overlay`).
  Locked, as a loaded config is."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise WorkdirError(f"{path} not found: there is no run in {workdir} (train one: make demo)")
  return overlay(read_json(path))


def prepare(config, workdir: str, *, mode: str) -> None:
  """Creates the workdir or checks that it holds a run of this same config."""
  check(config, workdir, mode=mode)
  if mode == "train":
    claim(config, workdir)


def claim(config, workdir: str) -> None:
  """Writes config.json into a workdir that has none (train calls this only once the data is
  loaded and checked: a run that fails before that leaves no config.json to refuse the
  corrected command). A path that is a file, or not writable: one line naming it."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    return
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir={workdir} is a file, not a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
    write_json(path, config_lib.to_dict(config))
  except OSError as e:
    raise WorkdirError(f"--workdir={workdir}: cannot write {path} ({e.strerror})") from None


def check(config, workdir: str, *, mode: str) -> None:
  """Refuses a workdir that holds a run of another config (or, for eval, none); writes
  nothing."""
  path = os.path.join(workdir, "config.json")
  current = config_lib.to_dict(config)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir={workdir} is a file, not a directory")
  if not os.path.exists(path):
    if mode == "eval":
      raise WorkdirError(f"{workdir} has no config.json: there is no run to evaluate there")
    # The nearest folder that exists must take the run's files (else a traceback, later).
    parent = os.path.abspath(workdir)
    while not os.path.exists(parent):
      parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
      raise WorkdirError(f"--workdir={workdir}: {parent} is not a writable directory")
    return
  saved = config_lib.to_dict(read_config(workdir))
  differ = config_lib.diff(saved, current)
  changeable = (is_eval_field if mode == "eval" else
                lambda f: f.split(".")[0] in MUTABLE_SECTIONS or f in MUTABLE_FIELDS)
  fixed = [f for f in differ if not changeable(f)]
  if fixed:
    both = "; ".join(f"{f}: the run {_get(saved, f)!r}, now {_get(current, f)!r}"
                     for f in fixed[:5])
    raise WorkdirError(
        f"{workdir} holds a run of a different config: {', '.join(fixed)} differ from "
        f"{path} ({both}). Use a new --workdir, or the same config.")
  if differ:
    logging.info("workdir %s: evaluation/logging fields changed: %s", workdir,
                 ", ".join(differ))


def _get(tree: dict, path: str):
  for part in path.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return tree


# Written (atomically) once the new outputs are complete in the staging folder and before any
# old output is touched: from then on the new set wins, and `recover` finishes moving it in.
JOURNAL = ".publish.json"


def publish(workdir: str, staging: str) -> None:
  """Moves finished outputs from `staging` into the workdir as one set.

  A journal naming the staged outputs is written first; then metrics.json is removed, the
  outputs are moved in and metrics.json comes last. A kill at any instant leaves either the
  previous complete set (no journal yet) or a journal with which `recover` (run at the next
  start, evaluation or api.load) completes the new set; in between, no metrics.json stands
  next to a mix of old and new outputs.
  """
  if not os.path.isfile(os.path.join(staging, "metrics.json")):
    raise WorkdirError(f"{staging} has no metrics.json: refusing to publish incomplete outputs")
  write_json(os.path.join(workdir, JOURNAL),
             {"staging": os.path.relpath(staging, workdir), "names": sorted(os.listdir(staging))})
  _roll_forward(workdir)


def recover(workdir: str) -> bool:
  """Completes a publication a kill interrupted (see publish); True if there was one."""
  for stale in glob.glob(os.path.join(glob.escape(workdir), JOURNAL + ".tmp-*")):
    os.remove(stale)                # a journal killed while being written: nothing began
  if not os.path.isfile(os.path.join(workdir, JOURNAL)):
    return False
  logging.warning("%s: completing the publication of outputs that was interrupted", workdir)
  _roll_forward(workdir)
  return True


def _roll_forward(workdir: str) -> None:
  journal = read_json(os.path.join(workdir, JOURNAL))
  staging = os.path.join(workdir, journal["staging"])
  metrics = os.path.join(workdir, "metrics.json")
  if os.path.exists(os.path.join(staging, "metrics.json")) and os.path.exists(metrics):
    os.remove(metrics)              # not yet moved in: the old one must not stand meanwhile
  for name in journal["names"]:
    source = os.path.join(staging, name)
    if name == "metrics.json" or not os.path.exists(source):
      continue                      # metrics last; a name already moved by an earlier try
    target = os.path.join(workdir, name)
    if os.path.isdir(target):
      shutil.rmtree(target)
    os.replace(source, target)
  if os.path.exists(os.path.join(staging, "metrics.json")):
    os.replace(os.path.join(staging, "metrics.json"), metrics)
  shutil.rmtree(staging, ignore_errors=True)
  os.remove(os.path.join(workdir, JOURNAL))


def staging_dir(workdir: str) -> str:
  recover(workdir)          # a pending publication's staged outputs are the newest set
  path = os.path.join(workdir, ".staging")
  shutil.rmtree(path, ignore_errors=True)
  os.makedirs(path)
  return path


# ----------------------------------------------------------------------------- the run's log

# Log records of background work (Orbax's save threads, asyncio tasks, threads and callbacks
# that fail at exit): their tracebacks go to log.txt only; the error they cause reaches the
# terminal as one line from the main thread.
BACKGROUND = "vsr_jax.background"


class _LogFile(py_logging.FileHandler):
  """Appends to log.txt; a log that cannot be written (a full disk) is skipped, never an
  error of its own."""

  def handleError(self, record):
    del record


def attach_log(directory: str, process: int = 0) -> str:
  """Every log record from now on also goes to <directory>/log.txt (log.process<i>.txt for
  the other processes of a multi-host run); background threads' and exit callbacks' failures
  are logged there instead of printed. Returns the file's path."""
  name = "log.txt" if process == 0 else f"log.process{process}.txt"
  path = os.path.join(directory, name)
  root = py_logging.getLogger()
  for h in root.handlers:
    if isinstance(h, _LogFile):
      if h.baseFilename == os.path.abspath(path):
        return path
      root.removeHandler(h)
      h.close()
  handler = _LogFile(path, encoding="utf-8", delay=True)
  handler.setFormatter(py_logging.Formatter(
      "%(levelname).1s%(asctime)s %(threadName)s %(filename)s:%(lineno)d] %(message)s"))
  root.addHandler(handler)
  background = py_logging.getLogger(BACKGROUND)
  threading.excepthook = lambda a: background.error(
      "thread %s failed", a.thread.name if a.thread else "?",
      exc_info=(a.exc_type, a.exc_value, a.exc_traceback))
  sys.unraisablehook = lambda u: background.error(
      "%s", u.err_msg or "exception ignored", exc_info=(u.exc_type, u.exc_value,
                                                        u.exc_traceback))
  return path


def warnings_to_log() -> None:
  """From now on Python's warnings go to log.txt only, as background failures do: after a
  failed write, abandoned background work (coroutines never awaited) warns at exit, and the
  terminal keeps its one line."""
  background = py_logging.getLogger(BACKGROUND)
  warnings.showwarning = lambda message, category, filename, lineno, *_: background.error(
      "%s:%s: %s: %s", filename, lineno, category.__name__, message)


def is_background(record) -> bool:
  """A log record of background work (see BACKGROUND), kept off the terminal."""
  return record.levelno >= py_logging.ERROR and (
      record.name in (BACKGROUND, "asyncio") or "/orbax/" in record.pathname)


_WRITE_FAILED = re.compile(r'(?:No space left on device|RESOURCE_EXHAUSTED: Error writing|'
                           r'Disk quota exceeded)')
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')


def disk_full(error: BaseException) -> str | None:
  """If `error` (or any exception in its chain) is a write that failed for lack of space,
  the first path one of them names (or '' when none does); else None."""
  found, seen = None, set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    path = None
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      path = error.filename or ""
    elif _WRITE_FAILED.search(str(error)):
      m = _QUOTED_PATH.search(str(error))
      path = m.group(1) if m else ""
    if path:
      return path
    found = found if path is None else path
    error = error.__cause__ or error.__context__
  return found
