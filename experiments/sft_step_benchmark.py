"""Stage 1's (SFT) training step, side by side in one run: the refined query of every row
(before), of the not-matched rows only (sft_loss(matched_first=): the rows whose L_ret
counts), and of the config's `sft.ret_rows` of them (when > 0: L_ret over a subset, scaled).

  .venv/bin/python experiments/sft_step_benchmark.py --config=configs/real_language_standin.py \
      --config.data.dir=DIR [--steps=8] [--stage=sft|sft_hqr]

Builds the stage's own loop (`Stage.loop(ctx)`: its fresh state, jitted step and batches) on
the config's train split with a freshly initialised engine (cost, not learning), once per way
(sft_loss given each way's arguments). All take the same first state and the same `--steps`
batches (compiled first); prints the loss of each on the first batch (equal for the first two;
the subset's is an estimate of it), the step rates and their ratios to the first.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import jax
from absl import app, flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from vsr_jax import registry, stages   # pylint: disable=g-import-not-at-top
from vsr_jax.data import sources   # pylint: disable=g-import-not-at-top
from vsr_jax.engine import towers   # pylint: disable=g-import-not-at-top
from vsr_jax.objectives import sft   # pylint: disable=g-import-not-at-top

config_flags.DEFINE_config_file("config", None, "Config file[:preset].")
flags.DEFINE_integer("steps", 8, "Timed steps each way.")
flags.DEFINE_string("stage", "sft", "The SFT stage to time (sft | sft_hqr).")
FLAGS = flags.FLAGS


def timed(loop, state, batches) -> tuple[float, float]:
  """(seconds per step over batches[1:], the loss of the step on batches[0])."""
  s, m = loop.step_fn(state, batches[0], None)          # compile
  loss = float(m["loss"])
  start = time.perf_counter()
  for b in batches[1:]:
    s, m = loop.step_fn(s, b, None)
  jax.block_until_ready(m)
  return (time.perf_counter() - start) / (len(batches) - 1), loss


def main(argv):
  del argv
  config = FLAGS.config
  tok, splits = sources.load_data(config, "unused", splits=(config.data.train_split,),
                                  tokenizer=towers.tokenizer_for(config))
  split = splits[config.data.train_split]
  engine = towers.build_engine(config, len(tok))
  params = towers.init_engine(engine, config, jax.random.key(0))
  stage = registry.STAGES.get(FLAGS.stage, "--stage")
  with tempfile.TemporaryDirectory() as workdir:
    ctx = stages.Context(config, workdir, tok, splits, engine, params={"engine": params})
    batches = None
    ways = [("every row's refined query", dict(matched_first=0, ret_rows=0)),
            ("the not-matched rows' only", dict(ret_rows=0))]
    if config.sft.ret_rows:
      ways.append((f"sft.ret_rows={config.sft.ret_rows} of them", {}))
    real = sft.sft_loss
    results = []
    for name, forced in ways:
      sft.sft_loss = lambda *a, forced=forced, **k: real(*a, **dict(k, **forced))
      try:
        loop = stage.loop(ctx)
        if batches is None:
          batches = [loop.batch_fn(step, None) for step in range(FLAGS.steps + 1)]
        # A fresh state per way: the step donates its input state.
        results.append((name,) + timed(loop, loop.initial_state(), batches))
      finally:
        sft.sft_loss = real
  cfg = config.sft
  print(f"{FLAGS.stage} step: batch {cfg.batch_size} (half matched), {cfg.hard_negatives} hard "
        f"negatives, tokens {batches[0]['tokens'].shape[1]} wide, text tower "
        f"{config.engine.text.kind}; compile excluded")
  base = results[0][1]
  for name, seconds, loss in results:
    print(f"{name}: {1 / seconds:.2f} step/s (x{base / seconds:.2f}), loss on the first batch "
          f"{loss:.6f}")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
