"""Stage 0's hard-negative mining on a frozen pretrained text tower: every query encoded again
(before) vs the cached pooled encodings with the current projection (engine/query_cache.py),
side by side in one run.

  .venv/bin/python experiments/mining_benchmark.py --config=configs/real_language_standin.py \
      --config.data.dir=DIR [--repeats=3]

Times one mining round each way on the config's train split (compiled first), counts the
queries whose hard negatives are the same both ways, and prints the seconds and their ratio.
The one-off cost of filling the cache is printed too.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from vsr_jax.data import sources   # pylint: disable=g-import-not-at-top
from vsr_jax.engine import query_cache, towers   # pylint: disable=g-import-not-at-top
from vsr_jax.stages import engine as engine_stage   # pylint: disable=g-import-not-at-top

config_flags.DEFINE_config_file("config", None, "Config file[:preset] (a minilm engine).")
flags.DEFINE_integer("repeats", 3, "Timed mining rounds each way (the best is kept).")
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


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
