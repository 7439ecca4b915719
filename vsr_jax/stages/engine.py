"""Stage 0 ('engine'): contrastive pretraining of the dual-encoder search engine, then frozen.

'engine' trains both towers; with `text_only_steps` > 0 it sees every fine-grained token (the
index learns the fine details) and a second loop, 'engine_text', then retrains the text tower
alone on captions that keep each fine-grained token with probability `fine_keep`: a query
encoder that reads fine-grained queries only partly, over an index that holds what it misses.
Without a text-only phase, both towers train on the `fine_keep` captions. On a frozen pretrained
text tower with `caption_variants` > 0 those captions are drawn that many times per caption and
encoded once (engine/query_cache.py): a step then trains the projection and the video tower.
Every `mine_every` steps the engine mines hard negatives with its current weights over a fresh
pool of the synthetic world's pretraining stream (source='stream': a generic engine that never
saw the benchmark's videos) or over the train split (source='train').
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
from flax.training import train_state

from vsr_jax import hosts, registry
from vsr_jax.data import batching, store
from vsr_jax.engine import encode, index as index_lib, query_cache, towers
from vsr_jax.objectives import contrastive
from vsr_jax.stages import base


def _tx(cfg, params, steps: int):
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, max(1, min(cfg.warmup_steps, steps // 2)), max(steps, 2))
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(schedule, weight_decay=cfg.weight_decay))
  return towers.freeze(tx, params)   # a pretrained text encoder stays as loaded


# A pretrained text tower encodes stage 0's captions cut to a multiple of this many tokens
# (batching.engine_batch): its forward is most of the step, and is linear in the width.
TOKEN_MULTIPLE = query_cache.TOKEN_MULTIPLE


def joint_steps(cfg) -> int:
  return cfg.steps - cfg.text_only_steps


def joint_state(config, engine, rng=None):
  rng = jax.random.PRNGKey(config.seed) if rng is None else rng
  params = towers.init_engine(engine, config, rng)
  tx = _tx(config.engine.train, params, joint_steps(config.engine.train))
  return train_state.TrainState.create(apply_fn=engine.apply, params=params, tx=tx)


def text_state(config, engine, text_params):
  params = {"text": text_params}
  tx = _tx(config.engine.train, params, config.engine.train.text_only_steps)
  return train_state.TrainState.create(apply_fn=engine.apply, params=params, tx=tx)


# One compiled search per (index shape, k): a lambda jitted per call would compile again at
# every mining round.
search = jax.jit(lambda index, q, k: index.search(q, k), static_argnums=2)


def mine_hard_negatives(engine, params, split, top_k: int, batch: int, *, pooled=None,
                        every_seconds: float = 1e9) -> np.ndarray:
  """[Q, top_k] videos the current engine ranks highest for each caption, its own excluded.

  pooled: the split's queries through a frozen text encoder (query_cache): only the trained
  projection is applied, instead of encoding every query again."""
  videos = encode.encode_videos(engine, params, split.features, split.num_frames, batch,
                                name="mining: encode videos", every_seconds=every_seconds)
  queries = query_cache.query_vectors(engine, params, split.tokens, batch, pooled)
  k = min(top_k + 1, split.num_videos)
  index = index_lib.ExactIndex.build(videos)
  ids = np.concatenate([np.asarray(search(index, queries[i:i + batch], k)[1])
                        for i in range(0, len(queries), batch)])
  own = ids == split.video_index[:, None]
  keep = ~own
  keep[~own.any(1), -1] = False          # own video not listed: drop the last instead
  return ids[keep].reshape(len(ids), k - 1)[:, :top_k].astype(np.int32)


def _pretrain_pool(config, tokenizer, train, pool_index: int):
  """The videos stage 0 trains on for a while: a fresh synthetic pool, or the train split."""
  if config.engine.train.source == "train":
    return train
  # Each pool starts far into the engine's own stream: pools never share a family.
  return store.synthetic_pool(config.data, tokenizer, split="pretrain",
                              num_videos=config.engine.train.pool_videos,
                              first_family=pool_index * 1_000_000)


class EngineStage(base.Stage):
  name = "engine"
  reads = ("seed", "data.source", "data.synthetic", "data.tfds", "data.train_split",
           "data.max_frames", "data.max_query_len", "data.feature_dim", "data.fps", "engine")
  meaning = ("data.source", "data.tfds.name", "data.synthetic.seed", "data.fps",
             "engine.text.kind", "engine.text.pretrained_dir")

  def key_fields(self, config):
    # A source other than the generated world reads its data from a folder: the folder is the
    # dataset (two runs on two folders never share an engine).
    if config.data.source == "reference":
      return self.reads + ("data.reference_dir", "data.reference_features_dir")
    if config.data.source != "synthetic":
      return self.reads + ("data.dir", "data.manual_dir")
    return self.reads

  def folders(self, config):
    cfg = config.engine.train
    out = [("engine", joint_steps(cfg))]
    return out + [("engine_text", cfg.text_only_steps)] if cfg.text_only_steps else out

  def loop(self, ctx, *, text_only=False, video_params=None, text_params=None) -> base.Loop:
    config, engine = ctx.config, ctx.engine
    cfg = config.engine.train
    train = ctx.splits.get(config.data.train_split)
    lc = {"pool": None, "pool_index": None, "hard": None, "pooled": None}
    keep = cfg.fine_keep if (text_only or not cfg.text_only_steps) else 1.0
    full = (lambda p: {"text": p["text"], "video": video_params}) if text_only else (lambda p: p)
    # A frozen tower's captions, when no fine token is dropped, are the cached pooled
    # encodings: a step then runs the projection only, not the encoder's forward. So are
    # they with caption_variants: drawn variants of the fine_keep captions, encoded once.
    frozen = query_cache.frozen_text(engine)
    from_pooled = (cfg.source == "train" and train is not None and frozen
                   and (keep == 1.0 or not train.fine.any() or cfg.caption_variants > 0))
    variants = from_pooled and keep < 1.0 and train.fine.any()

    def pooled_train(params):
      """The train split's queries through a frozen text encoder, once per run (cached in the
      workdir), when mining reads the train split; None otherwise."""
      if cfg.source != "train" or not query_cache.frozen_text(engine):
        return None
      if "pooled_train" not in ctx.cache:
        ctx.cache["pooled_train"] = query_cache.pooled_queries(
            engine, params, train.tokens, ctx.workdir, config.data.train_split,
            every_seconds=config.log.progress_seconds)
      return ctx.cache["pooled_train"]

    def batch_fn(step, state):
      pool_index = step // cfg.mine_every
      if lc["pool_index"] != pool_index:
        lc["pool"] = _pretrain_pool(config, ctx.tokenizer, train,
                                    pool_index + (1000 if text_only else 0))
        lc["pool_index"] = pool_index
        if variants and lc["pooled"] is None:    # the loop's first step: `state` is given
          lc["pooled"] = query_cache.caption_variants(
              engine, full(hosts.fetch(state.params)), train, keep, cfg.caption_variants,
              config.seed + 7 * text_only, ctx.workdir, config.data.train_split,
              every_seconds=config.log.progress_seconds)
        elif from_pooled and not variants:   # a new pool or the loop's first step
          lc["pooled"] = pooled_train(full(hosts.fetch(state.params)))
        if step % cfg.mine_every == 0 or lc["hard"] is None:
          # Mining is deterministic given the weights: a resumed run mines again at a pool
          # boundary; the checkpointed negatives serve a resume in the middle of a pool.
          params = full(hosts.fetch(state.params))
          lc["hard"] = mine_hard_negatives(
              engine, params, lc["pool"], min(cfg.mine_top_k, lc["pool"].num_videos - 1),
              config.eval.batch_size, pooled=pooled_train(params),
              every_seconds=config.log.progress_seconds)
      return batching.engine_batch(lc["pool"], step, seed=config.seed + 7 * text_only,
                                   batch_size=cfg.batch_size, fine_keep=keep,
                                   hard_pool=lc["hard"], hard_negatives=cfg.hard_negatives,
                                   pooled=lc["pooled"] if from_pooled else None,
                                   token_multiple=TOKEN_MULTIPLE if frozen else 0)

    @functools.partial(jax.jit, donate_argnums=0)
    def step_fn(state, batch, rng):
      del rng
      def loss_fn(params):
        params = full(params)
        if "pooled" in batch:
          q = engine.apply({"params": params}, batch["pooled"],
                           method=towers.DualEncoder.text_from_pooled)
        else:
          q = engine.apply({"params": params}, batch["tokens"],
                           method=towers.DualEncoder.encode_text)
        v = engine.apply({"params": params}, batch["features"], batch["num_frames"],
                         method=towers.DualEncoder.encode_video)
        return contrastive.engine_loss(q, v, batch["video_ids"], cfg.temperature)
      grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
      metrics["grad_norm"] = optax.tree.norm(grads)
      return state.apply_gradients(grads=grads), metrics

    folder = "engine_text" if text_only else "engine"
    # The initial state is made in a jit sharded by config.mesh.params (base.Loop.init), except
    # a pretrained text tower's, whose weights are read from files on the host.
    state, init, init_args = None, None, ()
    if text_only:
      init, init_args = functools.partial(text_state, config, engine), (text_params,)
    elif hasattr(engine.text, "model_dir"):
      state = joint_state(config, engine)
    else:
      init = functools.partial(joint_state, config, engine)
      init_args = (jax.random.PRNGKey(config.seed),)
    return base.Loop(
        folder=folder, steps=dict(self.folders(config))[folder], state=state, init=init,
        init_args=init_args,
        description=self.describe(config, folder), step_fn=step_fn, batch_fn=batch_fn,
        extra_fn=lambda: {"hard_pool": lc["hard"]},
        restore_extra=lambda extra: lc.update(hard=extra.get("hard_pool")),
        # A new pool and its mining (the weights) come at multiples of mine_every, or at the
        # loop's first step; the batches in between only read them, and are made ahead.
        reads_state=lambda step: step % cfg.mine_every == 0)

  def train(self, ctx):
    params = hosts.fetch(base.run_loop(self.loop(ctx), ctx).params)
    if ctx.config.engine.train.text_only_steps:
      loop = self.loop(ctx, text_only=True, video_params=params["video"],
                       text_params=params["text"])
      text = hosts.fetch(base.run_loop(loop, ctx).params)["text"]
      params = {"text": text, "video": params["video"]}
    return params

  def restore(self, ctx):
    config, engine = ctx.config, ctx.engine
    state = joint_state(config, engine)
    steps = dict(self.folders(config))
    params = base.restore_folder(ctx, "engine", state, self.describe(config, "engine"),
                                 steps["engine"])
    # An earlier step of the joint phase (eval.checkpoint=engine:STEP) has no text phase yet.
    if "engine_text" in steps and not ("engine" in ctx.at and "engine_text" not in ctx.at):
      text = base.restore_folder(
          ctx, "engine_text", text_state(config, engine, state.params["text"]),
          self.describe(config, "engine_text"), steps["engine_text"])["text"]
      params = {"text": text, "video": params["video"]}
    return params


registry.STAGES.register("engine", EngineStage())
