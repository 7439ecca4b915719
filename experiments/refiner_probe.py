"""How fast a query refiner learns through the frozen engine's soft-token slots.

  python experiments/refiner_probe.py --workdir=runs/demo --refiner=agent
  python experiments/refiner_probe.py --workdir=runs/demo --refiner=bag_of_words
  python experiments/refiner_probe.py --workdir=runs/demo --refiner=agent \
      --set agent.sqr_head=rollout --set agent.latent_eps=1e-6    # another agent head

Trains one refiner on the retrieval loss alone (InfoNCE of the refined query against every
train video, the engine frozen) and prints train and test VR R@1 when *every* query is refined,
next to the original query's. The observation is the original query's top-1 video.
  agent         the SQR path of a fresh agent (the run's config: transformer over the query
                and the video, refine / latent-input / append projectors, N latents);
  bag_of_words  the mean of the engine's word embeddings of the query -> a GELU MLP -> N soft
                tokens: no video, no transformer; a floor for what the slot channel can carry.
Comparing the two on the same engine tells whether the agent's refinement is limited by the
engine's channel (both slow) or by the agent (bag_of_words fast, agent slow).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from vsr_jax import config_lib, rollout, stages
from vsr_jax import workdir as workdir_lib
from vsr_jax.agent import policy
from vsr_jax.data.tokenizer import PAD
from vsr_jax.engine import encode
from vsr_jax.engine.towers import DualEncoder
from vsr_jax.objectives import sft

flags.DEFINE_string("workdir", "runs/demo", "A run whose stage 0 has finished.")
flags.DEFINE_enum("refiner", "agent", ["agent", "bag_of_words"], "What refines the query.")
flags.DEFINE_integer("steps", 300, "Training steps.")
flags.DEFINE_integer("eval_every", 100, "Steps between evaluations.")
flags.DEFINE_integer("batch", 64, "Train queries per step.")
flags.DEFINE_integer("eval_queries", 1500, "Queries of each split evaluated.")
flags.DEFINE_integer("hidden", 512, "bag_of_words: hidden width of the MLP.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (agent: its projectors').")
flags.DEFINE_float("body_learning_rate", 0.0,
                   "agent: Adam learning rate of everything but the SQR projectors "
                   "(0 -> --learning_rate).")
flags.DEFINE_float("temperature", 0.1, "InfoNCE temperature (SFT's).")
flags.DEFINE_multi_string("set", [], "agent: a config override FIELD=VALUE on top of the run's "
                          "config (e.g. agent.sqr_head=parallel); repeatable.")
FLAGS = flags.FLAGS


def agent_refiner(config, vocab_size, engine, engine_params):
  """(params, soft(params, tokens, frames, num_frames, q0) -> [B, N, width])."""
  agent = policy.build_agent(config, vocab_size, "sqr")
  params = policy.init_agent(agent, config, jax.random.PRNGKey(config.seed + 1),
                             engine_params if config.agent.engine_inputs else None)

  def soft(p, tokens, frames, num_frames, q0):
    view = rollout.engine_view(agent, engine, engine_params, frames, q0)
    out = agent.apply({"params": p}, tokens, frames, num_frames,
                      num_latents=config.agent.num_latents, mode="greedy", sigma=1.0,
                      method=policy.Agent.act, **view)
    return agent.apply({"params": p}, out["action"], method=policy.Agent.soft_tokens)
  return params, soft


def bag_of_words_refiner(config, engine, engine_params):
  table = engine.apply({"params": engine_params}, jnp.arange(engine.text.vocab_size),
                       method=DualEncoder.word_vectors)
  width, n = table.shape[-1], config.agent.num_latents
  k1, k2 = jax.random.split(jax.random.PRNGKey(config.seed + 1))
  # Large first-layer weights: word embeddings are small, and the MLP needs varied features.
  params = {"w1": jax.random.normal(k1, (width, FLAGS.hidden)) * 10 / np.sqrt(width),
            "b1": jnp.zeros(FLAGS.hidden),
            "w2": jax.random.normal(k2, (FLAGS.hidden, n * width)) * 0.01}

  def soft(p, tokens, frames, num_frames, q0):
    del frames, num_frames, q0
    mask = (tokens != PAD)[..., None]
    bag = (table[tokens] * mask).sum(1) / jnp.maximum(mask.sum(1), 1)
    return (jax.nn.gelu(bag @ p["w1"] + p["b1"]) @ p["w2"]).reshape(-1, n, width)
  return params, soft


def main(_):
  # The run's config (fields added since keep their defaults), then --set.
  config = workdir_lib.read_config(FLAGS.workdir)
  config = config_lib.apply_overrides(config, dict(kv.split("=", 1) for kv in FLAGS.set))
  if not config.agent.num_latents:
    raise SystemExit(f"{FLAGS.workdir}: agent.num_latents is 0; there is nothing to refine with")
  ctx = stages.Context.open(config, FLAGS.workdir,
                            splits=(config.data.train_split, config.data.eval_split))
  tokenizer, splits, engine = ctx.tokenizer, ctx.splits, ctx.engine
  tr, te = splits[config.data.train_split], splits[config.data.eval_split]
  ep = ctx.engine_params
  b = config.eval.batch_size
  view = {}
  for s in (tr, te):
    videos = encode.encode_videos(engine, ep, s.features, s.num_frames, b)
    queries = encode.encode_queries(engine, ep, s.tokens, b)
    view[s.name] = (videos, queries, np.argmax(queries @ videos.T, 1))
  if FLAGS.refiner == "agent":
    params, soft = agent_refiner(config, len(tokenizer), engine, ep)
  else:
    params, soft = bag_of_words_refiner(config, engine, ep)

  def refined(p, tokens, frames, num_frames, q0):
    return engine.apply({"params": ep}, tokens, soft(p, tokens, frames, num_frames, q0),
                        method=DualEncoder.encode_text)

  refined_jit = jax.jit(refined)

  def r1(split, p):
    """(refined, original) VR R@1 over the first eval_queries queries of a split."""
    videos, queries, top = view[split.name]
    n = min(FLAGS.eval_queries, split.num_queries)
    q = np.concatenate([np.asarray(refined_jit(
        p, split.tokens[i:i + b], split.features[top[i:i + b]],
        split.num_frames[top[i:i + b]], queries[i:i + b])) for i in range(0, n, b)])[:n]
    gt = split.video_index[:n]
    out = []
    for x in (q, queries[:n]):
      scores = x @ videos.T
      out.append(100 * np.mean((scores > scores[np.arange(n), gt][:, None]).sum(1) == 0))
    return out

  corpus = jnp.asarray(view[tr.name][0])
  tx = optax.adam(FLAGS.learning_rate)
  if FLAGS.refiner == "agent" and FLAGS.body_learning_rate:
    tx = optax.multi_transform(
        {"projector": tx, "body": optax.adam(FLAGS.body_learning_rate)},
        {k: "projector" if k in sft.PROJECTORS else "body" for k in params})

  @jax.jit
  def step(p, opt, tokens, frames, num_frames, q0, gt):
    def loss_fn(p):
      logits = refined(p, tokens, frames, num_frames, q0) @ corpus.T / FLAGS.temperature
      return jnp.mean(jax.nn.logsumexp(logits, 1) -
                      jnp.take_along_axis(logits, gt[:, None], 1)[:, 0])
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt, loss

  opt = tx.init(params)
  rng = np.random.default_rng(config.seed)
  _, q_tr, top_tr = view[tr.name]
  start = time.time()
  for i in range(1, FLAGS.steps + 1):
    qi = rng.integers(0, tr.num_queries, FLAGS.batch)
    params, opt, loss = step(params, opt, tr.tokens[qi], tr.features[top_tr[qi]],
                             tr.num_frames[top_tr[qi]], q_tr[qi], tr.video_index[qi])
    if i % FLAGS.eval_every == 0 or i == FLAGS.steps:
      (a, a0), (c, c0) = r1(tr, params), r1(te, params)
      print(f"{FLAGS.refiner} step {i:4d}  loss {float(loss):.3f}  every query refined: "
            f"train R@1 {a:.1f} (original {a0:.1f})  test R@1 {c:.1f} (original {c0:.1f})"
            f"  {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
  app.run(main)
