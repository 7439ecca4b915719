"""Entry point: flags -> train_and_evaluate / evaluate_workdir.

  python -m vsr_jax.main --config=configs/synthetic.py[:preset] [--config.a.b=value ...] \
      --workdir=DIR [--mode=train|eval]
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from vsr_jax import config_lib

flags.DEFINE_string("workdir", None, "Directory of the run (config, data, checkpoints, outputs).")
flags.DEFINE_enum("mode", "train", ["train", "eval"],
                  "train: run (or resume) every stage, then evaluate; eval: re-evaluate from "
                  "the workdir's checkpoints.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS

_CONFIG: list = []   # [spec, overrides], filled by the flags parser below


def parse_flags(argv: list[str]) -> list[str]:
  """Takes --config=file[:arg] and --config.a.b=value out of argv; absl parses the rest."""
  spec, overrides, rest = None, {}, [argv[0]]
  args = iter(argv[1:])
  for arg in args:
    if arg.startswith("--config=") or arg == "--config":
      spec = arg.partition("=")[2] if "=" in arg else next(args, "")
    elif arg.startswith("--config."):
      key, eq, value = arg[len("--config."):].partition("=")
      if not eq:
        value = next(args, "")
      overrides[key] = value
    else:
      rest.append(arg)
  if not spec:
    sys.exit("error: --config=configs/<file>.py[:preset] is required")
  _CONFIG[:] = [spec, overrides]
  return flags.FLAGS(rest)


class _QuietLibraries:
  """Keeps INFO chatter of orbax/jax internals out of the run's log (warnings still show)."""

  def filter(self, record) -> bool:
    noisy = ("/orbax/", "/jax/_src/", "/etils/")
    return record.levelno >= 30 or not any(n in record.pathname for n in noisy)


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    config = config_lib.load(*_CONFIG)
    from vsr_jax import train   # after the config: config errors come fast
    if FLAGS.mode == "train":
      train.train_and_evaluate(config, FLAGS.workdir)
    else:
      train.evaluate_workdir(config, FLAGS.workdir)
  except (config_lib.ConfigError, ValueError, FloatingPointError) as e:
    # Bad input: one clear line, not a traceback.
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
