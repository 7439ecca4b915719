"""train_and_evaluate(config, workdir): the stages named in config.stages, in order, then the
evaluation of every method row; evaluate_workdir re-evaluates a trained run from its
checkpoints. What each stage does is its own module (vsr_jax/stages/); this file only
sequences them.
"""

from __future__ import annotations

import contextlib
import os

from absl import logging
from tensorboardX import SummaryWriter

from vsr_jax import calibration, config_lib, defaults, evaluate, hosts, registry, sharding, stages
from vsr_jax import workdir as workdir_lib
from vsr_jax.stages import NonFiniteError  # noqa: F401 (re-exported: callers catch it here)


def check_before_compiling(config, workdir: str) -> None:
  """Bad combinations that would otherwise fail late: a stage whose upstream stage is neither
  in config.stages nor finished in the workdir."""
  defaults.validate(config)
  for name in config.stages:
    for before in registry.STAGES.get(name).after:
      if before not in config.stages and not stages.finished(config, workdir, before):
        raise workdir_lib.WorkdirError(
            f"stage {name} starts from stage {before}'s parameters, but "
            f"{os.path.join(workdir, 'checkpoints', before)} holds no finished checkpoint and "
            f"{before!r} is not in config.stages")


def check_corpora(ctx) -> None:
  """The mesh's corpus axis against every loaded split, before anything compiles."""
  for name, split in ctx.splits.items():
    sharding.check_corpus(ctx.mesh, len(split.num_frames), f"{name} split's")


def train_and_evaluate(config, workdir: str) -> dict:
  if config.eval.checkpoint:
    raise config_lib.ConfigError(
        f"config.eval.checkpoint={config.eval.checkpoint}: evaluates an earlier step of a trained "
        "run; use it with --mode=eval --eval_name=NAME")
  check_before_compiling(config, workdir)
  mesh = sharding.make_mesh(config.mesh)   # before the workdir is claimed: a bad mesh leaves
  sharding.check_batch_sizes(config, mesh)  # nothing behind
  workdir_lib.check(config, workdir, mode="train")
  if os.path.isdir(workdir):   # outputs a kill left half-published are completed first
    hosts.on_primary(lambda: workdir_lib.recover(workdir), "recover outputs")
  ctx = stages.Context.open(config, workdir, mesh=mesh, splits=calibration.with_calibration_split(
      config, (config.data.train_split, config.data.eval_split)))
  check_corpora(ctx)
  # Claimed only now: a run that failed on its input (a missing manual_dir, a bad file, a
  # corpus too small for the mesh) leaves no config.json to refuse the corrected command.
  hosts.primary_first(lambda: workdir_lib.claim(config, workdir), "workdir")
  workdir_lib.attach_log(workdir, hosts.index())
  # TensorBoard events from process 0 only (every process logs its own progress lines).
  with (SummaryWriter(os.path.join(workdir, "tb")) if hosts.is_primary()
        else contextlib.nullcontext()) as writer:
    ctx.writer = writer
    for name in config.stages:
      ctx.params[name] = registry.STAGES.get(name).train(ctx)
  return evaluate.evaluate_run(ctx, workdir)


def eval_dir(workdir: str, eval_name: str) -> str:
  return os.path.join(workdir, "evals", eval_name)


def _start_eval_dir(config, out: str) -> None:
  os.makedirs(out, exist_ok=True)
  # An earlier evaluation of this name stops counting as complete before anything changes.
  if os.path.exists(os.path.join(out, "metrics.json")):
    os.remove(os.path.join(out, "metrics.json"))
  workdir_lib.write_json(os.path.join(out, "config.json"), config_lib.to_dict(config))


def evaluate_workdir(config, workdir: str, eval_name: str = "") -> dict:
  """--mode=eval: every output of a trained run recomputed from its checkpoints, into the
  workdir itself or, with eval_name, into <workdir>/evals/<eval_name>/ (with the evaluation's
  own config.json), never over the run's own outputs."""
  defaults.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_sizes(config, mesh, ("eval.batch_size",))
  workdir_lib.prepare(config, workdir, mode="eval")
  hosts.on_primary(lambda: workdir_lib.recover(workdir), "recover outputs")
  at = stages.parse_checkpoint(config, workdir)
  ctx = stages.Context.open(config, workdir, mesh=mesh, splits=calibration.with_calibration_split(
      config, (config.data.eval_split,)))
  check_corpora(ctx)
  ctx.at = at
  for folder in at:
    later = [s for s in config.stages if stages.folder_owner(config, folder) in
             registry.STAGES.get(s).after]
    if later:
      logging.warning("eval.checkpoint=%s: the rows of %s evaluate their final parameters, "
                      "trained against the final %s, with this earlier one", config.eval.checkpoint,
                      ", ".join(later), folder)
  out = workdir
  if eval_name:
    if os.sep in eval_name or eval_name in (".", ".."):
      raise workdir_lib.WorkdirError(f"--eval_name={eval_name!r}: a plain folder name")
    out = eval_dir(workdir, eval_name)
    hosts.on_primary(lambda: _start_eval_dir(config, out), "evaluation folder")
  elif at:
    raise workdir_lib.WorkdirError(
        "config.eval.checkpoint evaluates an earlier step: give it an --eval_name so that the "
        "run's own outputs stay those of its final checkpoints")
  workdir_lib.attach_log(out, hosts.index())
  return evaluate.evaluate_run(ctx, out)
