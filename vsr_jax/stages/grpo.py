"""Stage 2 ('grpo'): GRPO over whole sampled multi-turn episodes, starting from (and held near,
by the k3 KL) the stage-1 policy (vsr_jax/objectives/grpo.py)."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import numpy as np
from absl import logging
from flax.training import train_state

from vsr_jax import hosts, registry
from vsr_jax.engine import index as index_lib, towers
from vsr_jax.objectives import grpo
from vsr_jax.rollout import Corpus, EpisodeConfig
from vsr_jax.stages import base
from vsr_jax.stages.sft import AgentStage, ret_keys, train_retrieval


def episode_config(config, *, turns: int, mode: str, refine: str) -> EpisodeConfig:
  return EpisodeConfig(turns=turns, num_latents=config.agent.num_latents, refine=refine,
                       sigma=config.agent.sigma, mode=mode,
                       mask_rejected=config.rollout.mask_rejected,
                       view_query=config.rollout.view_query)


def grpo_queries(first_hit: np.ndarray, cfg, seed: int) -> Callable[[int], np.ndarray]:
  """step -> the train queries of GRPO batch `step` (deterministic in seed and step).

  cfg.balanced: half of them with a right first retrieval (first_hit [Q]), half with a wrong
  one (stage 1's 1:1); otherwise uniform over the split, where most first retrievals are wrong
  and the answer reward then pays a verifier that rejects everything. A class with no query
  falls back to uniform, with a warning.
  """
  pools = (np.flatnonzero(first_hit), np.flatnonzero(~first_hit))
  balanced = cfg.balanced and min(len(p) for p in pools) > 0
  if cfg.balanced and not balanced:
    logging.warning("grpo.balanced: no train query's first retrieval is %s (%d right, %d "
                    "wrong); GRPO samples queries uniformly instead",
                    "right" if not len(pools[0]) else "wrong", len(pools[0]), len(pools[1]))
  elif balanced:
    logging.info("grpo: %d train queries with a right first retrieval, %d wrong; balanced "
                 "1:1 in batches", len(pools[0]), len(pools[1]))
  half = cfg.batch_size // 2

  def queries(step: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 29, step])
    if not balanced:
      return rng.choice(len(first_hit), cfg.batch_size, replace=False)
    rest = cfg.batch_size - half
    return np.concatenate([rng.choice(pools[0], half, replace=len(pools[0]) < half),
                           rng.choice(pools[1], rest, replace=len(pools[1]) < rest)])
  return queries


class GrpoStage(AgentStage):
  name = "grpo"
  after = ("engine", "sft")
  reads = ("agent", "grpo", "rollout")

  def folders(self, config):
    return [(self.name, config.grpo.steps)]

  def optimizer(self, config):
    return grpo.optimizer(config.grpo)

  def train(self, ctx):
    return hosts.fetch(base.run_loop(self.loop(ctx), ctx).params)

  def loop(self, ctx) -> base.Loop:
    """Its optimisation loop: the state (from the stage-1 policy), step and batches (from ctx:
    the train split, the engine's parameters and its view of the split)."""
    config = ctx.config
    cfg = config.grpo
    agent, engine, engine_params = self.agent(ctx), ctx.engine, ctx.engine_params
    ref_params = ctx.stage_params("sft")
    split = ctx.splits[config.data.train_split]
    retrieval = train_retrieval(ctx)
    key_ids, key_valid = ret_keys(config, retrieval, split)
    corpus = Corpus.from_split(index_lib.ExactIndex.build(retrieval.videos, ctx.mesh), split,
                               ctx.mesh)
    spec = episode_config(config, turns=cfg.turns, mode="sample", refine=self.refiner(config))
    tx = self.optimizer(config)
    queries = grpo_queries(retrieval.top_ids[:, 0] == split.video_index, cfg, config.seed)

    def batch_fn(step, state):
      del state
      qi = queries(step)
      return {"tokens": split.tokens[qi], "orig_query": retrieval.queries[qi],
              "gt": split.video_index[qi],
              "gt_time": split.times[qi], "ret_keys": retrieval.videos[key_ids[qi]],
              "ret_valid": key_valid[qi]}

    # The corpus goes in as an argument (not a closed-over constant): it keeps its sharding
    # over the mesh's 'corpus' axis inside the compiled step.
    train_step = jax.jit(
        lambda state, batch, rng, corpus: grpo.make_train_step(
            agent, engine, engine_params, ref_params, corpus, spec, cfg)(state, batch, rng),
        donate_argnums=0)
    step_fn = functools.partial(train_step, corpus=corpus)
    return base.Loop(folder=self.name, steps=cfg.steps, state=None,
                     init=lambda p: train_state.TrainState.create(
                         apply_fn=agent.apply, params=p, tx=towers.freeze(tx, p)),
                     init_args=(ref_params,),
                     description=self.describe(config, self.name), step_fn=step_fn,
                     batch_fn=batch_fn, reads_state=lambda step: False)   # made ahead


registry.STAGES.register("grpo", GrpoStage())
