"""What every training stage shares: the registered `Stage` interface, the run's `Context`, the
one training loop (`run_loop`), restoring a stage's parameters (`load_params`), and the keys
that tell when two runs' stages are the same training (sweeps share those checkpoints).

A stage (vsr_jax/stages/<name>.py) says how to build its state, its step, its batches and how
to restore it; `train.py` only sequences the stages named in config.stages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import threading
import zlib
from typing import Callable

import jax
import numpy as np
from absl import logging
from flax.training import train_state

from vsr_jax import checkpoints, hosts, registry, sharding
from vsr_jax.data import sources
from vsr_jax.engine import towers
from vsr_jax.progress import Progress
from vsr_jax.workdir import WorkdirError


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite value; the message names the step and the term."""


# ------------------------------------------------------------------------ the run's context

@dataclasses.dataclass
class Context:
  """What stages read and produce in one run: the config, the data, the engine, finished
  stages' parameters (by stage name) and things stages share (e.g. the engine's view of the
  train split)."""
  config: object
  workdir: str
  tokenizer: object
  splits: dict
  engine: towers.DualEncoder
  mesh: object = None
  writer: object = None
  params: dict = dataclasses.field(default_factory=dict)
  cache: dict = dataclasses.field(default_factory=dict)
  at: dict = dataclasses.field(default_factory=dict)   # checkpoint folder -> step to restore

  @classmethod
  def open(cls, config, workdir: str, *, splits=None, mesh=None) -> "Context":
    """Loads the data (splits; default: the eval split, which gives the tokenizer too) and
    builds the engine module."""
    # Pretrained models' files are checked first (headers only): a bad one fails in seconds.
    own = towers.tokenizer_for(config)
    registry.AGENT_BACKBONES.get(config.agent.backbone, "agent.backbone").check(config)
    # Process 0 of a multi-host run makes what is missing (generated data, a TFDS build);
    # then every process reads it at once.
    hosts.primary_first(lambda: sources.prepare_data(config, workdir), "prepare data")
    tokenizer, loaded = sources.load_data(config, workdir,
                                          splits=splits or (config.data.eval_split,),
                                          tokenizer=own)
    engine = towers.build_engine(config, len(tokenizer))
    return cls(config, workdir, tokenizer, loaded, engine, mesh=mesh)

  @property
  def vocab_size(self) -> int:
    return len(self.tokenizer)

  def stage_params(self, name: str):
    """A finished stage's parameters: trained in this run, or restored from the workdir."""
    if name not in self.params:
      self.params[name] = registry.STAGES.get(name, "stages").restore(self)
    return self.params[name]

  @property
  def engine_params(self):
    return self.stage_params("engine")


# ------------------------------------------------------------------------ stages

class Stage:
  """A registered training stage. Subclasses set the class fields and implement train and
  restore (both return the stage's final parameters)."""
  name: str = ""
  after: tuple = ()      # stages whose parameters it starts from or reads
  # Config fields (sections or leaves) that decide what it trains; with the keys of `after`
  # they make its sharing key (`stage_key`): two runs with equal keys train the same thing.
  reads: tuple = ()
  # The short list of fields that change what its stored parameters mean (beyond their
  # structure and shapes, which Orbax checks): a checkpoint that differs there is refused.
  meaning: tuple = ()

  def folders(self, config) -> list[tuple[str, int]]:
    """(checkpoint folder, final step) of each of its loops, in order."""
    raise NotImplementedError

  def train(self, ctx: Context):
    raise NotImplementedError

  def restore(self, ctx: Context):
    raise NotImplementedError

  # Agent stages: the agent module their parameters belong to.
  def refiner(self, config) -> str:
    return ""

  def agent(self, ctx: Context):
    return None

  def key_fields(self, config) -> tuple:
    """The fields of its sharing key (`reads`, plus what a stage adds for some configs)."""
    return self.reads

  def describe(self, config, folder: str) -> dict:
    return checkpoints.describe(config, folder, self.meaning, key=stage_key(config, self.name))


def stage_key(config, name: str) -> str:
  """A digest of what stage `name` trains: its `reads` fields and its upstream stages' keys."""
  stage = registry.STAGES.get(name, "stages")
  payload = {f: checkpoints.field_value(config, f) for f in stage.key_fields(config)}
  payload["stage"] = name
  payload["after"] = {a: stage_key(config, a) for a in stage.after}
  text = json.dumps(payload, sort_keys=True, default=str)
  return hashlib.sha1(text.encode()).hexdigest()[:16]


def stage_keys(config) -> dict[str, str]:
  """{stage: key} for every stage in config.stages (sweeps share equal keys' checkpoints)."""
  return {name: stage_key(config, name) for name in config.stages}


def folder_owner(config, folder: str) -> str | None:
  """The stage of config.stages that writes checkpoint folder `folder`."""
  for name in config.stages:
    if folder in dict(registry.STAGES.get(name).folders(config)):
      return name
  return None


def finished(config, workdir: str, name: str) -> bool:
  """Whether every checkpoint folder of stage `name` holds its final step."""
  for folder, steps in registry.STAGES.get(name, "stages").folders(config):
    path = os.path.join(workdir, "checkpoints", folder)
    if not os.path.isdir(path) or steps not in [int(d) for d in os.listdir(path) if d.isdigit()]:
      return False
  return True


# ------------------------------------------------------------------------ the loop

# Host batches prepared ahead of the step that needs them (Batches).
PREFETCH_DEPTH = 2


def _every_step(step: int) -> bool:
  del step
  return True


@dataclasses.dataclass
class Loop:
  """One checkpointed optimisation loop of a stage."""
  folder: str                     # checkpoint folder, log prefix
  steps: int
  # The initial state: `init(*init_args)`, a pure function that run_loop shapes with
  # jax.eval_shape and computes in a jit whose outputs are already sharded by config.mesh.params
  # (a large state is never whole on one device; init_args: its arrays, not closed over as
  # constants); or, for a state that cannot be made under jit (weights read from files), the
  # state itself.
  state: train_state.TrainState | None
  description: dict               # stored with each checkpoint (checkpoints.describe)
  step_fn: Callable               # (state, batch, rng) -> (state, metrics)
  batch_fn: Callable              # (step, state) -> host batch (dict of arrays)
  init: Callable | None = None
  init_args: tuple = ()
  extra_fn: Callable | None = None      # () -> host arrays saved to resume exactly
  restore_extra: Callable | None = None  # (saved arrays) -> None
  # step -> whether batch_fn reads `state`, or changes what extra_fn returns, at that step.
  # Those batches are made in turn with the current state; the others may be made ahead by a
  # thread, with state=None. The default (every step) prepares nothing ahead.
  reads_state: Callable[[int], bool] = _every_step

  def abstract_state(self):
    """The initial state's shapes and dtypes (nothing computed)."""
    if self.init is not None:
      return jax.eval_shape(self.init, *self.init_args)
    return jax.eval_shape(lambda s: s, self.state)

  def initial_state(self, shardings=None):
    """The initial state, placed by `shardings` (a tree like abstract_state's) when given."""
    if self.init is not None:
      return jax.jit(self.init, out_shardings=shardings)(*self.init_args)
    return self.state if shardings is None else jax.device_put(self.state, shardings)


class _Failed:
  """An error raised while preparing a batch ahead, re-raised where that batch is asked for."""

  def __init__(self, error: BaseException):
    self.error = error


class Batches:
  """The device batches of steps start..end-1, asked for in order with the state they may read.

  A step whose batch reads the state (and the first step) is made when asked; the steps after
  it, up to the next such step, are made ahead by a thread, at most `depth` batches ahead. So
  every batch_fn call sees what the sequential loop's would (batch_fn is deterministic in its
  step and, at its state-reading steps, the state), and the batches are the same bit for bit.
  """

  def __init__(self, batch_fn: Callable, reads_state: Callable[[int], bool], put: Callable,
               start: int, end: int, depth: int = PREFETCH_DEPTH):
    self.batch_fn, self.reads_state, self.put = batch_fn, reads_state, put
    self.start, self.end, self.depth = start, end, depth
    self.next = start
    self.queue = queue.Queue(maxsize=max(depth, 1))
    self.thread = None
    self.stop = threading.Event()

  def ahead(self, step: int) -> bool:
    return self.depth > 0 and step > self.start and not self.reads_state(step)

  def get(self, step: int, state):
    if step != self.next:
      raise ValueError(f"batches are asked for in order: step {step}, expected {self.next}")
    self.next = step + 1
    if not self.ahead(step):
      self._join()          # the previous run of steps is consumed: nothing else calls batch_fn
      batch = self.put(self.batch_fn(step, state))
      if step + 1 < self.end and self.ahead(step + 1):
        self.thread = threading.Thread(target=self._work, args=(step + 1,), daemon=True,
                                       name=f"batches from step {step + 1}")
        self.thread.start()
      return batch
    item = self.queue.get()
    if isinstance(item, _Failed):
      raise item.error
    return item

  def _work(self, first: int) -> None:
    step = first
    try:
      while step < self.end and self.ahead(step):
        if not self._offer(self.put(self.batch_fn(step, None))):
          return
        step += 1
    except BaseException as e:   # pylint: disable=broad-except  (a kill too: re-raised in get)
      self._offer(_Failed(e))

  def _offer(self, item) -> bool:
    while not self.stop.is_set():
      try:
        self.queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def _join(self) -> None:
    if self.thread is not None:
      self.thread.join()
      self.thread = None

  def close(self) -> None:
    """Stops the thread (the loop ended early or failed): batches made ahead are dropped."""
    self.stop.set()
    self._join()


def profile_range(config) -> tuple[int, int] | None:
  """log.profile_steps 'A:B' -> (A, B); '' -> None (validated in defaults.validate)."""
  if not config.log.profile_steps:
    return None
  first, _, last = config.log.profile_steps.partition(":")
  return int(first), int(last)


class _Trace:
  """A jax.profiler trace of steps A..B-1 (log.profile_steps) of one loop, into
  WORKDIR/profile/<folder>/ (TensorBoard's profile plugin, Perfetto or XProf read it)."""

  def __init__(self, config, workdir: str, folder: str, start: int):
    span = profile_range(config)
    self.first, self.last = span if span else (0, 0)
    self.first = max(self.first, start)     # a resumed loop traces what is left of the range
    self.directory = os.path.join(workdir, "profile", folder)
    self.on = False

  def at(self, step: int, state) -> None:
    """Called before step `step` is dispatched: starts or ends the trace."""
    if step == self.first and step < self.last:
      jax.profiler.start_trace(self.directory)
      self.on = True
    elif step == self.last:
      self.end(state)

  def end(self, state=None) -> None:
    if self.on:
      if state is not None:
        jax.block_until_ready(state)      # the traced steps' device work is in the trace
      jax.profiler.stop_trace()
      self.on = False
      logging.info("profile trace written to %s", self.directory)


def run_loop(loop: Loop, ctx: Context) -> train_state.TrainState:
  """Restores a finished loop, resumes an interrupted one from its last checkpoint, stops on a
  non-finite value naming the step and the term (the last good checkpoint stays), logs to
  TensorBoard and prints a progress line.

  The device is kept busy: step N is dispatched before step N-1's metrics are fetched, and
  metrics are fetched only for a log step, a progress line or a checkpoint; batches are made
  ahead (Batches) and checkpoints are written in the background. The stage's results are the
  sequential loop's, bit for bit. A non-finite value is therefore seen late, but every step's
  metrics are checked, in order: the error names the first bad step and term, and a
  checkpoint is saved only after every step up to it is checked.
  """
  ckpt = checkpoints.Checkpoints(ctx.workdir, loop.folder, ctx.config.checkpoint.max_to_keep)
  try:
    state = _train(loop, ctx, ckpt)
  except BaseException:
    try:
      ckpt.close()        # the last save finishes; the loop's own error is what is raised
    except Exception:   # pylint: disable=broad-except
      logging.exception("%s: the last checkpoint save failed too", loop.folder)
    raise
  ckpt.close()            # waits for the last save; its failure is this loop's error
  return state


def _train(loop: Loop, ctx: Context, ckpt: checkpoints.Checkpoints):
  config = ctx.config
  mesh = ctx.mesh or sharding.make_mesh(config.mesh)
  # Parameters and optimizer state by config.mesh.params (replicated, or split over 'model'),
  # from the state's shapes alone: restored or made directly into their shards.
  abstract = loop.abstract_state()
  shardings = sharding.param_shardings(abstract, mesh, config.mesh.params)
  target = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                        abstract, shardings)
  latest, state = ckpt.restore_intact(target, loop.description)
  if latest is not None:
    if loop.restore_extra:
      loop.restore_extra(ckpt.restore_extra(latest))
    logging.info("%s: restored checkpoint at step %d", loop.folder, latest)
  else:
    state = loop.initial_state(shardings)
  start = int(state.step)
  if start >= loop.steps:
    return state
  data_sharding = sharding.batch_sharded(mesh)
  base_rng = jax.random.PRNGKey(config.seed + zlib.crc32(loop.folder.encode()) % 10_000)
  progress = Progress(loop.folder, loop.steps, "steps", config.log.progress_seconds)
  batches = Batches(loop.batch_fn, loop.reads_state,
                    lambda batch: hosts.put_rows(batch, data_sharding), start, loop.steps)
  trace = _Trace(config, ctx.workdir, loop.folder, start)
  unchecked = []          # (step, metrics still on the device), in step order

  def fetch(upto: int) -> dict:
    """Brings the metrics of every step up to `upto` to the host, checks them in step order
    and returns step `upto`'s."""
    nonlocal unchecked
    now = [u for u in unchecked if u[0] <= upto]
    unchecked = unchecked[len(now):]
    host = hosts.fetch([metrics for _, metrics in now])
    for (step, _), metrics in zip(now, host):
      for term, value in sorted(metrics.items()):
        if not np.all(np.isfinite(value)):
          try:            # a save in flight holds checked steps only: let it land
            ckpt.wait()
          except Exception:   # pylint: disable=broad-except  (the non-finite value is the news)
            logging.exception("%s: the last checkpoint save failed", loop.folder)
          raise NonFiniteError(
              f"{loop.folder} step {step}: {term} is {value}; stopped. The last good "
              f"checkpoint in {ckpt.directory} is kept (step {ckpt.latest_step()})")
    return host[-1]

  def report(step: int, metrics: dict) -> None:
    done = step + 1
    if ctx.writer is not None and (done % config.log.every_steps == 0 or done == loop.steps):
      for term, value in metrics.items():
        ctx.writer.add_scalar(f"{loop.folder}/{term}", float(value), done)
    progress.update(done, " ".join(f"{k} {float(v):.3f}" for k, v in sorted(metrics.items())
                                   if k in ("loss", "reward", "batch_r1", "verify_acc",
                                            "ret_r1", "vr_r1", "clip_frac")))

  wanted = None           # a step whose metrics are reported once the next step is queued
  try:
    for step in range(start, loop.steps):
      trace.at(step, state)
      with jax.profiler.StepTraceAnnotation(loop.folder, step_num=step):
        batch = batches.get(step, state)
        state, metrics = loop.step_fn(state, batch, jax.random.fold_in(base_rng, step))
      unchecked.append((step, metrics))
      if wanted is not None:        # one step late: the device already has this step to do
        report(wanted, fetch(wanted))
        wanted = None
      done = step + 1
      if done % config.log.every_steps == 0 or done == loop.steps or progress.due(done):
        wanted = step
      if done % config.checkpoint.every_steps == 0 or done == loop.steps:
        # A checkpoint never holds a state that came from a non-finite step.
        metrics = fetch(step)
        if wanted == step:
          report(step, metrics)
          wanted = None
        ckpt.save(done, state, loop.description,
                  extra=loop.extra_fn() if loop.extra_fn else None)
    trace.end(state)
  finally:
    batches.close()
    trace.end()
  return state


def restore_folder(ctx: Context, folder: str, state, description: dict, steps: int):
  """The params of checkpoint folder `folder`: its final step (`steps`), or the step
  ctx.at[folder] asks for (config.eval.checkpoint)."""
  directory = os.path.join(ctx.workdir, "checkpoints", folder)
  saved = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) \
      if os.path.isdir(directory) else []
  if not saved:
    raise WorkdirError(
        f"{os.path.abspath(directory)} holds no {folder} checkpoint: run that stage first "
        f"(--mode=train){available(ctx.workdir)}")
  step = ctx.at.get(folder)
  if step is None:
    step = saved[-1]
    if step < steps:
      raise WorkdirError(
          f"{os.path.abspath(directory)}: the {folder} checkpoint is at step {step} of "
          f"{steps}; resume training (--mode=train) first")
  elif step not in saved:
    raise WorkdirError(f"config.eval.checkpoint={folder}:{step}: no such step; "
                       f"{available(ctx.workdir).lstrip('; ')}")
  with checkpoints.Checkpoints(ctx.workdir, folder, create=False) as ckpt:
    restored = ckpt.restore(step, state, description)
  return hosts.fetch(restored.params)


def available(workdir: str) -> str:
  """'; saved: engine at steps 15, 30; sft at 20' (what --config.eval.checkpoint can name)."""
  root = os.path.join(workdir, "checkpoints")
  parts = []
  for folder in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    steps = sorted(int(d) for d in os.listdir(os.path.join(root, folder)) if d.isdigit())
    if steps:
      parts.append(f"{folder} at steps {', '.join(map(str, steps))}")
  return "; saved: " + "; ".join(parts) if parts else "; the workdir holds no checkpoint"


def parse_checkpoint(config, workdir: str) -> dict:
  """config.eval.checkpoint 'FOLDER:STEP' -> {folder: step} (checked against the workdir)."""
  if not config.eval.checkpoint:
    return {}
  folder, _, step = config.eval.checkpoint.partition(":")
  if folder_owner(config, folder) is None:
    raise WorkdirError(f"config.eval.checkpoint={config.eval.checkpoint}: no stage of this run "
                       f"writes a checkpoint folder {folder!r}{available(workdir)}")
  return {folder: int(step)}


def load_params(config, workdir: str, stage: str, *, ctx: Context | None = None,
                at: dict | None = None):
  """The parameters of stage `stage` of the run in `workdir`: its final step, or the steps
  `at` ({checkpoint folder: step}) names. ctx: an open Context of the run (else one is opened,
  which loads the eval split for the tokenizer)."""
  ctx = ctx or Context.open(config, workdir)
  if at:
    ctx = dataclasses.replace(ctx, at=dict(at), params={})
  return registry.STAGES.get(stage, "stage").restore(ctx)
