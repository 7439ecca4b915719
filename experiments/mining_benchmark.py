"""Stage 0 on a frozen pretrained text tower: its hard-negative mining and its training step,
every query encoded again (before) vs the cached pooled encodings with the current projection
(engine/query_cache.py), side by side in one run.

  .venv/bin/python experiments/mining_benchmark.py --config=configs/real_language_standin.py \
      --config.data.dir=DIR [--repeats=3]

Times one mining round each way on the config's train split (compiled first), counts the
queries whose hard negatives are the same both ways, and prints the seconds and their ratio.
The one-off cost of filling the cache is printed too. Then times `--steps` stage-0 training
steps (the config's batch, hard negatives and fine_keep; compiled first) on the same batches
two ways: every caption's tokens at the full width (before), and as stage 0 makes them now —
the cached encodings (the projection only) when no fine token is dropped
(engine.train.fine_keep=1), else the tokens cut to the batch's longest caption — and prints
the step rates and their ratio.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import types

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from vsr_jax.data import batching, sources   # pylint: disable=g-import-not-at-top
from vsr_jax.engine import query_cache, towers   # pylint: disable=g-import-not-at-top
from vsr_jax.stages import engine as engine_stage   # pylint: disable=g-import-not-at-top

config_flags.DEFINE_config_file("config", None, "Config file[:preset] (a minilm engine).")
flags.DEFINE_integer("repeats", 3, "Timed mining rounds each way (the best is kept).")
flags.DEFINE_integer("steps", 10, "Timed stage-0 steps each way.")
FLAGS = flags.FLAGS


def best_of(fn, repeats: int):
  out = fn()                                  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return min(times), out


def main(argv):
  del argv
  config = FLAGS.config
  tok = towers.tokenizer_for(config)
  _, splits = sources.load_data(config, "unused", splits=(config.data.train_split,),
                                tokenizer=tok)
  split = splits[config.data.train_split]
  engine = towers.build_engine(config, len(tok))
  if not query_cache.frozen_text(engine):
    raise app.UsageError("the config's text tower is not a frozen pretrained one "
                         "(engine.text.kind='minilm')")
  params = towers.init_engine(engine, config, jax.random.key(0))
  top_k = min(config.engine.train.mine_top_k, split.num_videos - 1)
  batch = config.eval.batch_size
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    pooled = query_cache.pooled_queries(engine, params, split.tokens, workdir,
                                        config.data.train_split)
    fill = time.perf_counter() - start
  before, want = best_of(lambda: engine_stage.mine_hard_negatives(
      engine, params, split, top_k, batch), FLAGS.repeats)
  after, got = best_of(lambda: engine_stage.mine_hard_negatives(
      engine, params, split, top_k, batch, pooled=pooled), FLAGS.repeats)
  same = float(np.mean(np.all(want == got, axis=1)))   # float rounding may swap a near tie
  print(f"train split: {split.num_queries} queries, {split.num_videos} videos; top_k {top_k}, "
        f"batch {batch}")
  print(f"filling the cache once (compile included): {fill:.2f} s")
  print(f"one mining round: every query encoded {before:.2f} s, from the cache {after:.2f} s "
        f"-> x{before / after:.1f} faster; queries with the same hard negatives: "
        f"{100 * same:.2f} %")
  with tempfile.TemporaryDirectory() as workdir:
    before, after, what = time_steps(config, engine, split, workdir)
  print(f"stage-0 step (batch {config.engine.train.batch_size}, "
        f"{config.engine.train.hard_negatives} hard negatives each, fine_keep "
        f"{config.engine.train.fine_keep}; compile excluded): every caption's full-width tokens "
        f"{1 / before:.2f} step/s, {what} {1 / after:.2f} step/s -> x{before / after:.2f}")


def time_steps(config, engine, split, workdir) -> tuple[float, float, str]:
  """Seconds per stage-0 step (the stage's own jitted step) on the same batches as stage 0
  makes them now (the cached encodings, or tokens cut to the longest caption) and with every
  caption's full-width tokens (before); and what stage 0 now reads."""
  ctx = types.SimpleNamespace(config=config, engine=engine, splits={config.data.train_split: split},
                              tokenizer=None, cache={}, workdir=workdir)
  loop = engine_stage.EngineStage().loop(ctx)
  state = loop.initial_state() if loop.state is None else loop.state
  cfg = config.engine.train
  now = [loop.batch_fn(step, state) for step in range(FLAGS.steps + 1)]
  before = []
  for step, b in enumerate(now):
    full = batching.engine_batch(split, step, seed=config.seed, batch_size=cfg.batch_size,
                                 fine_keep=cfg.fine_keep, hard_pool=None,
                                 hard_negatives=cfg.hard_negatives)
    before.append({k: v for k, v in b.items() if k != "pooled"} | {"tokens": full["tokens"]})
  if "pooled" in now[0]:
    what = "the cached encodings"
  else:
    widths = sorted({b["tokens"].shape[1] for b in now})
    what = f"tokens cut to widths {widths} of {before[0]['tokens'].shape[1]}"
  out = []
  for batches in (before, now):
    s = state
    s, m = loop.step_fn(s, batches[0], None)          # compile
    jax.block_until_ready(m)
    start = time.perf_counter()
    for b in batches[1:]:
      s, m = loop.step_fn(s, b, None)
    jax.block_until_ready(m)
    out.append((time.perf_counter() - start) / FLAGS.steps)
    state = s
  return out[0], out[1], what

if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
