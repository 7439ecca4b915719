"""Stage 1 ('sft', 'sft_hqr'): the supervised cold start of the agent (METHOD.md §3),
L = L_verify + 1[matched] L_time + 0.3 L_ret (vsr_jax/objectives/sft.py).

'sft' trains the refiner config.agent.refine (SQR by default); 'sft_hqr' trains the same agent
with discrete refinement words (HQR), for the comparison.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from vsr_jax import config_lib, hosts, registry
from vsr_jax.agent import policy
from vsr_jax.engine import encode, index as index_lib, query_cache, towers
from vsr_jax.objectives import sft
from vsr_jax.stages import base
from vsr_jax.stages.engine import search

# What an agent's stored parameters mean beyond their shapes (shared by the agent stages).
AGENT_MEANING = ("agent.refine", "agent.standardize_latents", "agent.latent_eps",
                 "agent.sqr_head", "agent.refine_words", "agent.engine_inputs", "agent.span_prior",
                 "engine.text.kind", "data.source", "data.synthetic.seed")


@dataclasses.dataclass
class Retrieval:
  """The frozen engine's view of a split: vectors, the original query's top results."""
  videos: np.ndarray        # [V, E]
  queries: np.ndarray       # [Q, E] original query vectors
  top_ids: np.ndarray       # [Q, depth]
  top_scores: np.ndarray    # [Q, depth]
  gt_score: np.ndarray      # [Q]


def engine_retrieval(config, engine, engine_params, split, depth: int, *,
                     pooled=None) -> Retrieval:
  """pooled: the split's queries through a frozen text encoder (query_cache): projected only."""
  index_lib.check_top_k(depth, split.num_videos, "sft.hard_pool_depth")
  b = config.eval.batch_size
  videos = encode.encode_videos(engine, engine_params, split.features, split.num_frames, b)
  queries = query_cache.query_vectors(engine, engine_params, split.tokens, b, pooled)
  index = index_lib.ExactIndex.build(videos)
  out = [jax.device_get(search(index, queries[i:i + b], depth))
         for i in range(0, len(queries), b)]
  gt_score = np.einsum("qe,qe->q", queries, videos[split.video_index])
  return Retrieval(videos, queries, np.concatenate([o[1] for o in out]),
                   np.concatenate([o[0] for o in out]), gt_score)


def train_retrieval(ctx) -> Retrieval:
  """The engine's view of the train split, computed once per run (agent stages share it)."""
  if "train_retrieval" not in ctx.cache:
    config = ctx.config
    split = ctx.splits[config.data.train_split]
    pooled = None
    if query_cache.frozen_text(ctx.engine):
      pooled = query_cache.pooled_queries(
          ctx.engine, ctx.engine_params, split.tokens, ctx.workdir, config.data.train_split,
          every_seconds=config.log.progress_seconds)
    ctx.cache["train_retrieval"] = engine_retrieval(
        config, ctx.engine, ctx.engine_params, split, config.sft.hard_pool_depth,
        pooled=pooled)
  return ctx.cache["train_retrieval"]


def ret_keys(config, retrieval: Retrieval, split):
  """Positive + mined hard negatives per query (METHOD.md §3): ids [Q, 1 + K], valid."""
  neg, valid = sft.hard_negative_pool(retrieval.top_scores, retrieval.top_ids,
                                      split.video_index, retrieval.gt_score,
                                      config.sft.hard_negatives, config.sft.ambiguity)
  ids = np.concatenate([split.video_index[:, None], neg], 1)
  valid = np.concatenate([np.ones((len(ids), 1), bool), valid], 1)
  return ids, valid


class AgentStage(base.Stage):
  """Shared by the agent stages: the agent module, its fresh state, restoring it."""
  meaning = AGENT_MEANING
  fixed_refiner = ""      # '' -> config.agent.refine

  def refiner(self, config) -> str:
    return self.fixed_refiner or config.agent.refine

  def agent(self, ctx):
    return policy.build_agent(ctx.config, ctx.vocab_size, self.refiner(ctx.config))

  def describe(self, config, folder):
    d = super().describe(config, folder)
    d["fields"]["agent.refine"] = self.refiner(config)   # what this stage's agent refines with
    return d

  def optimizer(self, config):
    return sft.optimizer(config.sft)

  def fresh_state(self, ctx, engine_params=None):
    agent = self.agent(ctx)
    a = ctx.config.agent
    params = policy.init_agent(agent, ctx.config, jax.random.PRNGKey(ctx.config.seed + 1),
                               engine_params if a.engine_inputs or a.engine_words else None,
                               ctx.engine)
    # A frozen pretrained trunk (LoRA) gets zero updates and no optimizer state.
    return train_state.TrainState.create(apply_fn=agent.apply, params=params,
                                         tx=towers.freeze(self.optimizer(ctx.config), params))

  def restore(self, ctx):
    (folder, steps), = self.folders(ctx.config)
    return base.restore_folder(ctx, folder, self.fresh_state(ctx), self.describe(ctx.config,
                                                                                 folder), steps)


class SftStage(AgentStage):
  name = "sft"
  after = ("engine",)
  reads = ("agent", "sft")

  def folders(self, config):
    return [(self.name, config.sft.steps)]

  def train(self, ctx):
    return hosts.fetch(base.run_loop(self.loop(ctx), ctx).params)

  def loop(self, ctx) -> base.Loop:
    """Its optimisation loop: the state, step and batches (from ctx: the train split, the
    engine's parameters and its view of the split)."""
    config = ctx.config
    cfg = config.sft
    agent, engine, engine_params = self.agent(ctx), ctx.engine, ctx.engine_params
    split = ctx.splits[config.data.train_split]
    retrieval = train_retrieval(ctx)
    key_ids, key_valid = ret_keys(config, retrieval, split)
    spans = sft.span_frames(split.times, split.frame_seconds[split.video_index],
                            split.num_frames[split.video_index])
    # Examples are (query, candidate video) pairs from the engine's top `candidate_depth` for
    # the original query (1 = the reference: the first retrieval only): the ground truth among
    # them is a matched example, the others are not. Both classes then look alike to the
    # engine, as they will at test time (a verifier trained on ground truths that the engine
    # missed learns "the engine likes it, so it is wrong").
    cand = retrieval.top_ids[:, :cfg.candidate_depth]
    is_gt = cand == split.video_index[:, None]
    pools = (np.argwhere(is_gt), np.argwhere(~is_gt))          # (query, rank) pairs
    if min(len(p) for p in pools) == 0:
      missing = "matched" if not len(pools[0]) else "unmatched"
      raise config_lib.InputError(f"{self.name}: no {missing} "
                       f"pairs in the engine's top-{cfg.candidate_depth} of the train split; "
                       "SFT needs both")
    logging.info("%s: %d matched / %d not-matched (query, video) pairs from the engine's "
                 "top-%d, balanced 1:1 in batches", self.name, len(pools[0]), len(pools[1]),
                 cfg.candidate_depth)

    # A batch's first `half` pairs are matched ones (the loss skips their refined queries).
    half = cfg.batch_size // 2

    def batch_fn(step, state):
      del state
      rng = np.random.default_rng([config.seed, 23, step])
      pairs = np.concatenate([pools[0][rng.integers(len(pools[0]), size=half)],
                              pools[1][rng.integers(len(pools[1]), size=cfg.batch_size - half)]])
      qi, vid = pairs[:, 0], cand[pairs[:, 0], pairs[:, 1]]
      assert (vid[:half] == split.video_index[qi[:half]]).all()   # sft_loss's matched_first
      return {"tokens": split.tokens[qi], "orig_query": retrieval.queries[qi],
              "frames": split.features[vid],
              "num_frames": split.num_frames[vid], "matched": vid == split.video_index[qi],
              "span": spans[qi], "gt": split.video_index[qi],
              "ret_keys": retrieval.videos[key_ids[qi]], "ret_ids": key_ids[qi],
              "ret_valid": key_valid[qi]}

    corpus = jax.numpy.asarray(retrieval.videos) if cfg.corpus_negatives else None
    refine = self.refiner(config)

    @functools.partial(jax.jit, donate_argnums=0)
    def step_fn(state, batch, rng):
      del rng
      loss_fn = functools.partial(sft.sft_loss, agent, engine, engine_params=engine_params,
                                  batch=batch, cfg=cfg, num_latents=config.agent.num_latents,
                                  corpus=corpus, refine=refine,
                                  matched_first=half, ret_rows=cfg.ret_rows)
      grads, metrics = jax.grad(lambda p: loss_fn(agent_params=p), has_aux=True)(state.params)
      metrics["grad_norm"] = optax.tree.norm(grads)
      return state.apply_gradients(grads=grads), metrics

    return base.Loop(folder=self.name, steps=cfg.steps,
                     state=None, init=lambda ep: self.fresh_state(ctx, ep),
                     init_args=(engine_params,),
                     description=self.describe(config, self.name), step_fn=step_fn,
                     batch_fn=batch_fn, reads_state=lambda step: False)   # made ahead


class SftHqrStage(SftStage):
  name = "sft_hqr"
  fixed_refiner = "hqr"


registry.STAGES.register("sft", SftStage())
registry.STAGES.register("sft_hqr", SftHqrStage())
