"""The fused episode (one jitted lax.scan over turns) against a host loop built as the reference
code is: a jitted agent step per turn, retrieval on the host between turns (a NumPy exact
inner-product search, as FAISS IndexFlatIP behind the reference's retrieval server), Python
control flow per query.

  python experiments/episode_benchmark.py --workdir=runs/demo [--queries=512] [--stage=grpo]

Same model, same corpus, same queries, greedy: prints whether the results are identical and
episodes per second of both, side by side in this process, and their ratio. The host loop
runs per query (as the reference's per-sample rollout) and, for a second ratio, over the same
batch the fused episode uses.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from vsr_jax import registry, stages
from vsr_jax import workdir as workdir_lib
from vsr_jax.agent import policy
from vsr_jax.engine import encode, index as index_lib
from vsr_jax.engine.towers import DualEncoder
from vsr_jax.rollout import Corpus, EpisodeConfig, engine_view, episode, span_to_seconds

flags.DEFINE_string("workdir", "runs/demo", "A trained run (make demo).")
flags.DEFINE_string("stage", "grpo", "Which agent: sft | sft_hqr | grpo.")
flags.DEFINE_integer("queries", 512, "Test queries to run.")
flags.DEFINE_integer("batch", 128, "Queries per fused call (and per batched host-loop call).")
flags.DEFINE_integer("per_query", 64, "Queries for the per-query host loop (it is slow).")
FLAGS = flags.FLAGS


class HostLoop:
  """Turns as separate device calls with host retrieval and Python decisions between them."""

  def __init__(self, agent, params, engine, engine_params, split, videos, spec):
    self.agent, self.params, self.engine, self.engine_params = agent, params, engine, engine_params
    self.split, self.videos, self.spec = split, videos, spec

    @jax.jit
    def encode_query(tokens, soft):
      return engine.apply({"params": engine_params}, tokens, soft,
                          method=DualEncoder.encode_text)

    @jax.jit
    def original_query(tokens):
      return engine.apply({"params": engine_params}, tokens, method=DualEncoder.encode_text)

    @jax.jit
    def agent_step(tokens, frames, nf, query_vec):
      view = engine_view(agent, engine, engine_params, frames, query_vec)
      out = agent.apply({"params": params}, tokens, frames, nf, num_latents=spec.num_latents,
                        mode="greedy", sigma=spec.sigma, method=policy.Agent.act, **view)
      F = out["span"].shape[1]
      flat = jnp.argmax(out["span"].reshape(tokens.shape[0], -1), -1)
      if agent.refine == "sqr":
        soft = agent.apply({"params": params}, out["action"], method=policy.Agent.soft_tokens)
      else:
        soft = engine.apply({"params": engine_params}, out["words"],
                            method=DualEncoder.word_vectors)
      return jnp.argmax(out["verify"], -1), jnp.stack([flat // F, flat % F], -1), soft

    self.encode_query, self.original_query, self.agent_step = (encode_query, original_query,
                                                               agent_step)

  def run(self, qi: np.ndarray):
    """Episodes of the queries qi together (one call per turn); returns final outcomes."""
    s = self.split
    tokens = s.tokens[qi]
    q = np.array(self.original_query(tokens))      # writable: refined rows replace it
    done = np.zeros(len(qi), bool)
    retrieved = np.zeros(len(qi), np.int32)
    verdict = np.zeros(len(qi), np.int32)
    times = np.zeros((len(qi), 2), np.float32)
    for t in range(self.spec.turns):
      live = np.flatnonzero(~done)
      if not len(live):
        break
      top1 = np.argmax(q[live] @ self.videos.T, axis=1)         # host retrieval
      v, sp, soft = jax.device_get(self.agent_step(
          tokens[live], s.features[top1], s.num_frames[top1], q[live]))
      retrieved[live], verdict[live] = top1, v
      times[live] = np.asarray(span_to_seconds(sp, s.frame_seconds[top1], s.durations[top1]))
      matched = v == policy.MATCHED
      last = t == self.spec.turns - 1
      refine = live[~matched] if not last else live[:0]
      if len(refine):
        q[refine] = np.asarray(self.encode_query(tokens[refine], soft[~matched]))
      done[live[matched]] = True
    return retrieved, verdict, times


def main(_):
  config = workdir_lib.read_config(FLAGS.workdir)
  ctx = stages.Context.open(config, FLAGS.workdir)
  split = ctx.splits[config.data.eval_split]
  engine, engine_params = ctx.engine, ctx.engine_params
  stage = registry.STAGES.get(FLAGS.stage, "stage")
  agent = stage.agent(ctx)
  params = stages.load_params(config, FLAGS.workdir, FLAGS.stage, ctx=ctx)
  videos = encode.encode_videos(engine, engine_params, split.features, split.num_frames, 256)
  corpus = Corpus.from_split(index_lib.ExactIndex.build(videos), split)
  spec = EpisodeConfig(turns=config.eval.turns, num_latents=config.agent.num_latents,
                       refine=stage.refiner(config), sigma=config.agent.sigma, mode="greedy")
  n = min(FLAGS.queries, split.num_queries) // FLAGS.batch * FLAGS.batch
  qi = np.arange(n)

  fused = jax.jit(functools.partial(episode, agent, engine, spec=spec))
  rng = jax.random.PRNGKey(0)

  def run_fused():
    outs = []
    for i in range(0, n, FLAGS.batch):
      b = qi[i:i + FLAGS.batch]
      steps = fused(params, engine_params, corpus, split.tokens[b], split.video_index[b], rng)
      outs.append(jax.device_get({k: steps[k][-1] for k in ("retrieved", "verdict",
                                                           "pred_time")}))
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  jax.block_until_ready(run_fused())                       # compile
  start = time.perf_counter()
  f = run_fused()
  fused_rate = n / (time.perf_counter() - start)

  host = HostLoop(agent, params, engine, engine_params, split, videos, spec)
  host.run(qi[:FLAGS.batch])                                 # compile every shape used
  start = time.perf_counter()
  outs = [host.run(qi[i:i + FLAGS.batch]) for i in range(0, n, FLAGS.batch)]
  batched_rate = n / (time.perf_counter() - start)
  h = [np.concatenate(x) for x in zip(*outs)]

  m = min(FLAGS.per_query, n)
  host.run(qi[:1])
  start = time.perf_counter()
  single = [host.run(qi[i:i + 1]) for i in range(m)]
  per_query_rate = m / (time.perf_counter() - start)
  s1 = [np.concatenate(x) for x in zip(*single)]

  same = (np.array_equal(f["retrieved"], h[0]) and np.array_equal(f["verdict"], h[1]) and
          np.allclose(f["pred_time"], h[2], atol=1e-4))
  same1 = (np.array_equal(f["retrieved"][:m], s1[0]) and np.array_equal(f["verdict"][:m], s1[1])
           and np.allclose(f["pred_time"][:m], s1[2], atol=1e-4))
  print(f"{FLAGS.stage} agent, {config.eval.turns} turns, corpus {split.num_videos} videos, "
        f"{n} queries")
  print(f"identical results: batched host loop {same}, per-query host loop {same1} "
        f"(first {m} queries)")
  print(f"fused episode (one jitted scan, batch {FLAGS.batch}): {fused_rate:9.1f} episodes/s")
  print(f"host loop, per query (as the reference):           {per_query_rate:9.1f} episodes/s"
        f"   ratio {fused_rate / per_query_rate:.1f}x")
  print(f"host loop, batch {FLAGS.batch} per turn:                {batched_rate:9.1f} "
        f"episodes/s   ratio {fused_rate / batched_rate:.1f}x")


if __name__ == "__main__":
  app.run(main)
