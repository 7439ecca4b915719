"""Entry point: flags -> train_and_evaluate / evaluate_workdir.

  python -m vsr_jax.main --config=configs/synthetic.py[:preset] [--config.a.b=value ...] \
      --workdir=DIR [--mode=train|eval] [--eval_name=NAME] \
      [--coordinator=HOST:PORT --num_processes=N --process_id=I]

The config comes through `ml_collections.config_flags` (`file.py:arg`, `--config.a.b=value`).
`--mode=eval` reads the run's own config.json when no --config is given, and takes overrides of
the fields evaluation reads only (eval, index, mesh, log, data.eval_split, ...); with
--eval_name its outputs go to DIR/evals/NAME/, never over the run's own. Bad input ends with
one clear line; any other exception keeps its traceback. Several processes (multi-host) run the
same command with their own --process_id (vsr_jax/hosts.py); a process that fails exits at
once, and the others stop when they miss its heartbeat.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from vsr_jax import config_lib
from vsr_jax import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file: path/to/file.py[:arg] (--config.a.b=value overrides a field).")
flags.DEFINE_string("workdir", None, "Directory of the run (config, data, checkpoints, outputs).")
flags.DEFINE_enum("mode", "train", ["train", "eval"],
                  "train: run (or resume) every stage, then evaluate; eval: evaluate the "
                  "workdir's checkpoints.")
flags.DEFINE_string("eval_name", "", "--mode=eval: write the outputs into DIR/evals/NAME/ "
                    "(needed with overrides: the run's own outputs stay as they are).")
flags.DEFINE_string("coordinator", "", "Multi-host: HOST:PORT of process 0's coordination "
                    "service (with --num_processes and --process_id; on Slurm, Open MPI or a "
                    "TPU pod the processes find each other without these flags).")
flags.DEFINE_integer("num_processes", 0, "Multi-host: how many processes run this job.")
flags.DEFINE_integer("process_id", -1, "Multi-host: this process's index, 0..N-1.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS

RUN_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_config.py")


def _value(argv, name):
  """The value of --name=value / --name value in argv, or None."""
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.partition("=")[2]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _overrides(argv) -> dict[str, str]:
  out = {}
  for i, arg in enumerate(argv):
    m = re.match(r"--config\.([^=]+)(=(.*))?$", arg)
    if m:
      out[m.group(1)] = m.group(3) if m.group(2) else (argv[i + 1] if i + 1 < len(argv) else "")
  return out


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parse, with the run's own config for --mode=eval without --config, and bad input
  explained in one line (config_flags reports a misspelt field as a KeyError)."""
  argv = list(argv)
  if _value(argv, "config") is None:
    workdir = _value(argv, "workdir")
    if _value(argv, "mode") != "eval" or not workdir:
      sys.exit("error: --config=configs/<file>.py[:preset] is required (--mode=eval reads the "
               "run's own config.json)")
    if not os.path.isfile(os.path.join(workdir, "config.json")):
      sys.exit(f"error: {workdir} has no config.json: there is no run to evaluate there")
    argv.insert(1, f"--config={RUN_CONFIG}:{workdir}")
  path = _value(argv, "config").partition(":")[0]
  if not os.path.isfile(path):      # config_flags would report it only on first access
    sys.exit(f"error: config file {path!r} does not exist (from --config={_value(argv, 'config')})")
  try:
    return FLAGS(argv)
  except Exception as e:   # pylint: disable=broad-except (explained below, else re-raised)
    why = config_lib.explain(_value(argv, "config"), _overrides(argv))
    if why is None and isinstance(e, flags.Error):
      why = str(e)
    if why is None:
      raise
    sys.exit(f"error: {why}")


class _QuietLibraries:
  """Keeps INFO chatter of orbax/jax internals out of the terminal (warnings still show), and
  background threads' tracebacks too (they are in <workdir>/log.txt; the error they cause
  reaches the terminal from the main thread)."""

  def filter(self, record) -> bool:
    if workdir_lib.is_background(record):
      return False
    noisy = ("/orbax/", "/jax/_src/", "/etils/")
    return record.levelno >= 30 or not any(n in record.pathname for n in noisy)


def eval_config(config, overrides: dict):
  """--mode=eval: the overrides may touch only what evaluation reads."""
  training = sorted(f for f in overrides if not workdir_lib.is_eval_field(f))
  if training:
    raise config_lib.ConfigError(
        f"--config.{training[0]}: only training reads this field; --mode=eval evaluates the run "
        "as it was trained (it may change eval.*, index.*, mesh.*, log.*, checkpoint.*, "
        "data.eval_split, data.features_on_disk, imports)")
  if overrides and not FLAGS.eval_name:
    raise config_lib.ConfigError(
        f"--config.{next(iter(overrides))}: an evaluation with overrides needs --eval_name=NAME "
        "(its outputs go to WORKDIR/evals/NAME/; the run's own stay as they are)")
  return config


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from vsr_jax import defaults, hosts, train   # after the flags: config errors come fast
  try:
    config = _CONFIG.value
    defaults.validate(config)   # before joining: a bad config fails alone, not at a barrier
    hosts.initialize(config.mesh, FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    hosts.agree(config, FLAGS.workdir, FLAGS.mode, config.mesh.init_timeout_s)
    if FLAGS.mode == "train":
      if FLAGS.eval_name:
        raise config_lib.ConfigError("--eval_name is for --mode=eval")
      train.train_and_evaluate(config, FLAGS.workdir)
    else:
      eval_config(config, FLAGS["config"].override_values)
      train.evaluate_workdir(config, FLAGS.workdir, FLAGS.eval_name)
  except (config_lib.InputError, FloatingPointError) as e:
    # Bad input (or a run that diverged): one clear line, not a traceback.
    logging.error("%s: %s", type(e).__name__, e)
    _exit_now_if_multihost(f"error: {e}")
    sys.exit(f"error: {e}")
  except BaseException as e:   # pylint: disable=broad-except (re-raised with one process)
    where = workdir_lib.disk_full(e)
    if where is not None:
      # A full disk: one line (the traceback, and Orbax's threads' own, go to log.txt).
      std_logging.getLogger(workdir_lib.BACKGROUND).error("write failed", exc_info=True)
      workdir_lib.warnings_to_log()   # Orbax's abandoned writes warn at exit
      workdir = os.path.abspath(FLAGS.workdir or ".")
      if not where or os.path.abspath(where).startswith(workdir + os.sep):
        message = (f"error: no space left on the disk of --workdir={FLAGS.workdir}"
                   + (f" (writing {where})" if where else "") + ": free space or use another "
                   "--workdir; the same command then resumes from the newest intact checkpoint")
      else:   # e.g. data.dir's generated data or features cache
        message = (f"error: no space left on the disk of {where}: free space there (or point "
                   "config.data.dir elsewhere) and run the same command again")
      _exit_now_if_multihost(message)
      sys.exit(message)
    _exit_now_if_multihost(traceback.format_exc())
    raise


def _exit_now_if_multihost(message: str) -> None:
  """One process of several ends at once: a normal exit would wait at jax's shutdown barrier
  for processes that wait for it; its missing heartbeat stops them instead."""
  import jax   # pylint: disable=g-import-not-at-top
  if jax.distributed.is_initialized():
    print(f"process {jax.process_index()}: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
