"""How much VR R@1 any query-side refinement could win on a trained run's frozen engine.

  python experiments/query_headroom.py --workdir=runs/demo [--steps=1500] [--eval_every=250]

Keeps the engine's video vectors fixed and fine-tunes a copy of its whole text tower on the
train split's fine-grained queries (InfoNCE against every train video), printing train and
test VR R@1 / R@5 as it goes. SQR can only move the query vector, so the best test R@1 along
this curve is a generous bound on what the agent's refinement can reach from the same train
queries (the tower here may rewrite how every word is read; SQR only appends N tokens).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from vsr_jax import stages
from vsr_jax import workdir as workdir_lib
from vsr_jax.engine import encode
from vsr_jax.engine.towers import DualEncoder

flags.DEFINE_string("workdir", "runs/demo", "A run whose stage 0 has finished.")
flags.DEFINE_integer("steps", 1500, "Fine-tuning steps.")
flags.DEFINE_integer("eval_every", 250, "Steps between evaluations.")
flags.DEFINE_integer("batch", 128, "Train queries per step.")
flags.DEFINE_float("learning_rate", 3e-4, "Adam learning rate.")
flags.DEFINE_float("temperature", 0.05, "InfoNCE temperature (stage 0's).")
FLAGS = flags.FLAGS


def recall(queries, videos, gt):
  scores = queries @ videos.T
  rank = (scores > scores[np.arange(len(gt)), gt][:, None]).sum(1)
  return (rank == 0).mean(), (rank < 5).mean()


def main(_):
  config = workdir_lib.read_config(FLAGS.workdir)
  ctx = stages.Context.open(config, FLAGS.workdir,
                            splits=(config.data.train_split, config.data.eval_split))
  splits, engine = ctx.splits, ctx.engine
  tr, te = splits[config.data.train_split], splits[config.data.eval_split]
  params = ctx.engine_params
  b = config.eval.batch_size
  videos = {s.name: encode.encode_videos(engine, params, s.features, s.num_frames, b)
            for s in (tr, te)}

  def report(step, text, loss=float("nan")):
    p = {"text": text, "video": params["video"]}
    out = [f"step {step:5d}  loss {loss:.3f}"]
    for s in (tr, te):
      r1, r5 = recall(encode.encode_queries(engine, p, s.tokens, b), videos[s.name],
                      s.video_index)
      out.append(f"{s.name} R@1 {100 * r1:.1f} R@5 {100 * r5:.1f}")
    print("  ".join(out), flush=True)
    return r1

  tx = optax.adam(FLAGS.learning_rate)
  corpus = jnp.asarray(videos[tr.name])

  @jax.jit
  def step(text, opt, tokens, gt):
    def loss_fn(t):
      q = engine.apply({"params": {"text": t, "video": params["video"]}}, tokens,
                       method=DualEncoder.encode_text)
      logits = q @ corpus.T / FLAGS.temperature
      return jnp.mean(jax.nn.logsumexp(logits, 1) -
                      jnp.take_along_axis(logits, gt[:, None], 1)[:, 0])
    loss, grads = jax.value_and_grad(loss_fn)(text)
    updates, opt = tx.update(grads, opt, text)
    return optax.apply_updates(text, updates), opt, loss

  text = params["text"]
  opt = tx.init(text)
  best = base = report(0, text)
  rng = np.random.default_rng(config.seed)
  start = time.time()
  for i in range(1, FLAGS.steps + 1):
    qi = rng.integers(0, tr.num_queries, FLAGS.batch)
    text, opt, loss = step(text, opt, tr.tokens[qi], tr.video_index[qi])
    if i % FLAGS.eval_every == 0:
      best = max(best, report(i, text, float(loss)))
  print(f"test VR R@1: frozen engine {100 * base:.1f}, best fine-tuned text tower "
        f"{100 * best:.1f} ({100 * (best - base):+.1f} points); {time.time() - start:.0f} s")


if __name__ == "__main__":
  app.run(main)
