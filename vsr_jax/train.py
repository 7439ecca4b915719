"""train_and_evaluate(config, workdir): data -> stage 0 (engine) -> stage 1 (SFT) ->
stage 2 (GRPO) -> evaluation of every method row.

Every stage runs through one loop (`run_stage`): it restores a finished stage, resumes an
interrupted one from its last checkpoint, stops on a non-finite value naming the step and the
term (the last good checkpoint stays), logs to TensorBoard and prints a progress line.
`evaluate_workdir` re-evaluates from the checkpoints alone.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import zlib
from typing import Callable

import jax
import numpy as np
import optax
from absl import logging
from flax.training import train_state
from tensorboardX import SummaryWriter

from vsr_jax import config_lib, defaults, evaluate, sharding
from vsr_jax import workdir as workdir_lib
from vsr_jax.agent import policy
from vsr_jax.data import batching, store
from vsr_jax.engine import encode, index as index_lib, towers
from vsr_jax.objectives import contrastive, grpo, sft
from vsr_jax.progress import Progress
from vsr_jax.rollout import Corpus, EpisodeConfig


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite value; the message names the step and the term."""


# ------------------------------------------------------------------------------- data

def data_dir(config, workdir: str) -> str:
  return config.data.dir or os.path.join(workdir, "data")


def load_data(config, workdir: str, *, splits=None):
  """Generates (synthetic) or finds the dataset; returns the tokenizer and the loaded splits."""
  from vsr_jax.engine import pretrained   # pylint: disable=g-import-not-at-top
  directory = data_dir(config, workdir)
  splits = splits or (config.data.train_split, config.data.eval_split)
  # A pretrained text tower brings its own tokenizer (checked before any data is read).
  engine_tokenizer = pretrained.tokenizer_for(config)
  if config.data.source == "tfds":
    from vsr_jax.data.tfds import source as tfds_source   # TFDS imported only when used
    return tfds_source.load_data(config, directory, splits, tokenizer=engine_tokenizer)
  if config.data.source == "synthetic":
    store.write_synthetic(config.data, directory, progress_seconds=config.log.progress_seconds)
  tokenizer = engine_tokenizer or store.load_tokenizer(directory, config.data.train_split)
  loaded = {s: store.load_split(directory, s, config.data, tokenizer,
                                progress_seconds=config.log.progress_seconds) for s in splits}
  return tokenizer, loaded


# ------------------------------------------------------------------------- the loop

@dataclasses.dataclass
class Stage:
  name: str                       # checkpoint folder, log prefix
  steps: int
  state: train_state.TrainState   # the initial state (also the restore template)
  description: dict               # what a checkpoint must agree on to be restored
  step_fn: Callable               # (state, batch, rng) -> (state, metrics)
  batch_fn: Callable              # (step, state) -> host batch (dict of arrays)
  extra_fn: Callable | None = None      # () -> host arrays saved to resume exactly
  restore_extra: Callable | None = None  # (saved arrays) -> None


def run_stage(stage: Stage, config, workdir: str, mesh, writer) -> train_state.TrainState:
  ckpt = workdir_lib.Checkpoints(workdir, stage.name, config.checkpoint.max_to_keep)
  state = stage.state
  latest = ckpt.latest_step()
  if latest is not None:
    state = ckpt.restore(latest, state, stage.description)
    if stage.restore_extra:
      stage.restore_extra(ckpt.restore_extra(latest))
    logging.info("%s: restored checkpoint at step %d", stage.name, latest)
  start = int(state.step)
  if start >= stage.steps:
    ckpt.close()
    return state
  state = jax.device_put(state, sharding.replicated(mesh))
  data_sharding = sharding.batch_sharded(mesh)
  base_rng = jax.random.PRNGKey(config.seed + zlib.crc32(stage.name.encode()) % 10_000)
  progress = Progress(stage.name, stage.steps, "steps", config.log.progress_seconds)
  for step in range(start, stage.steps):
    batch = jax.device_put(stage.batch_fn(step, state), data_sharding)
    new_state, metrics = stage.step_fn(state, batch, jax.random.fold_in(base_rng, step))
    metrics = jax.device_get(metrics)
    for term, value in metrics.items():
      if not np.all(np.isfinite(value)):
        ckpt.close()
        raise NonFiniteError(
            f"{stage.name} step {step}: {term} is {value}; stopped. The last good checkpoint "
            f"in {ckpt.directory} is kept (step {ckpt.latest_step()})")
    state = new_state
    done = step + 1
    if done % config.log.every_steps == 0 or done == stage.steps:
      for term, value in metrics.items():
        writer.add_scalar(f"{stage.name}/{term}", float(value), done)
    # Every step: the line itself appears at most every log.progress_seconds.
    progress.update(done, " ".join(f"{k} {float(v):.3f}" for k, v in sorted(metrics.items())
                                   if k in ("loss", "reward", "batch_r1", "verify_acc",
                                            "ret_r1", "vr_r1")))
    if done % config.checkpoint.every_steps == 0 or done == stage.steps:
      ckpt.save(done, state, stage.description,
                extra=stage.extra_fn() if stage.extra_fn else None)
  ckpt.close()
  return state


def restore_params(config, workdir: str, name: str, state, description: dict, steps: int):
  """The final params of a finished stage (for evaluation or a later stage)."""
  ckpt = workdir_lib.Checkpoints(workdir, name, config.checkpoint.max_to_keep)
  step = ckpt.latest_step()
  if step is None:
    raise workdir_lib.WorkdirError(
        f"{ckpt.directory} holds no {name} checkpoint: run that stage first (--mode=train)")
  if step < steps:
    raise workdir_lib.WorkdirError(
        f"{ckpt.directory}: the {name} checkpoint is at step {step} of {steps}; resume "
        "training (--mode=train) first")
  restored = ckpt.restore(step, state, description)
  ckpt.close()
  return jax.device_get(restored.params)


# ----------------------------------------------------------------------------- stage 0

def engine_description(config, vocab_size: int) -> dict:
  return {"engine": config_lib.to_dict(config.engine), "vocab_size": vocab_size,
          "max_query_len": config.data.max_query_len, "feature_dim": config.data.feature_dim,
          "seed": config.seed}


def _engine_tx(cfg, params, steps: int):
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, max(1, min(cfg.warmup_steps, steps // 2)), max(steps, 2))
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(schedule, weight_decay=cfg.weight_decay))
  return towers.freeze(tx, params)   # a pretrained text encoder stays as loaded


def joint_steps(cfg) -> int:
  return cfg.steps - cfg.text_only_steps


def _engine_state(config, engine):
  params = towers.init_engine(engine, config, jax.random.PRNGKey(config.seed))
  tx = _engine_tx(config.engine.train, params, joint_steps(config.engine.train))
  return train_state.TrainState.create(apply_fn=engine.apply, params=params, tx=tx)


def _text_state(config, engine, text_params):
  params = {"text": text_params}
  tx = _engine_tx(config.engine.train, params, config.engine.train.text_only_steps)
  return train_state.TrainState.create(apply_fn=engine.apply, params=params, tx=tx)


# One compiled search per (index shape, k): a lambda jitted per call would compile again at
# every mining round.
_search = jax.jit(lambda index, q, k: index.search(q, k), static_argnums=2)


def mine_hard_negatives(engine, params, split, top_k: int, batch: int) -> np.ndarray:
  """[Q, top_k] videos the current engine ranks highest for each caption, its own excluded."""
  videos = encode.encode_videos(engine, params, split.features, split.num_frames, batch)
  queries = encode.encode_queries(engine, params, split.tokens, batch)
  k = min(top_k + 1, split.num_videos)
  index = index_lib.ExactIndex.build(videos)
  ids = np.concatenate([np.asarray(_search(index, queries[i:i + batch], k)[1])
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


def engine_stage(config, engine, tokenizer, train, *, text_only=False, video_params=None,
                 text_params=None) -> Stage:
  """Stage 0: contrastive pretraining, in up to two phases, then frozen.

  'engine' trains both towers; with `text_only_steps` > 0 it sees every fine-grained token
  (the index learns the fine details) and 'engine_text' then retrains the text tower alone on
  captions that keep each fine-grained token with probability `fine_keep`: a query encoder
  that reads fine-grained queries only partly, over an index that holds what it misses.
  Without a text-only phase, both towers train on the `fine_keep` captions.
  Every `mine_every` steps the engine mines hard negatives with its current weights over a
  fresh pool of the synthetic world's pretraining stream (source='stream': a generic engine
  that never saw the benchmark's videos) or over the train split (source='train').
  """
  cfg = config.engine.train
  ctx = {"pool": None, "pool_index": None, "hard": None}
  keep = cfg.fine_keep if (text_only or not cfg.text_only_steps) else 1.0
  full = (lambda p: {"text": p["text"], "video": video_params}) if text_only else (lambda p: p)

  def batch_fn(step, state):
    pool_index = step // cfg.mine_every
    if ctx["pool_index"] != pool_index:
      ctx["pool"] = _pretrain_pool(config, tokenizer, train, pool_index + (1000 if text_only
                                                                           else 0))
      ctx["pool_index"] = pool_index
      if step % cfg.mine_every == 0 or ctx["hard"] is None:
        # Mining is deterministic given the weights: a resumed run mines again at a pool
        # boundary; the checkpointed negatives serve a resume in the middle of a pool.
        ctx["hard"] = mine_hard_negatives(
            engine, full(jax.device_get(state.params)), ctx["pool"],
            min(cfg.mine_top_k, ctx["pool"].num_videos - 1), config.eval.batch_size)
    return batching.engine_batch(ctx["pool"], step, seed=config.seed + 7 * text_only,
                                 batch_size=cfg.batch_size, fine_keep=keep,
                                 hard_pool=ctx["hard"], hard_negatives=cfg.hard_negatives)

  @functools.partial(jax.jit, donate_argnums=0)
  def step_fn(state, batch, rng):
    del rng
    def loss_fn(params):
      params = full(params)
      q = engine.apply({"params": params}, batch["tokens"], method=towers.DualEncoder.encode_text)
      v = engine.apply({"params": params}, batch["features"], batch["num_frames"],
                       method=towers.DualEncoder.encode_video)
      return contrastive.engine_loss(q, v, batch["video_ids"], cfg.temperature)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return state.apply_gradients(grads=grads), metrics

  description = engine_description(config, engine.text.vocab_size)
  if text_only:
    return Stage(
        name="engine_text", steps=cfg.text_only_steps,
        state=_text_state(config, engine, text_params), description=description,
        step_fn=step_fn, batch_fn=batch_fn, extra_fn=lambda: {"hard_pool": ctx["hard"]},
        restore_extra=lambda extra: ctx.update(hard=extra.get("hard_pool")))
  return Stage(
      name="engine", steps=joint_steps(cfg), state=_engine_state(config, engine),
      description=description, step_fn=step_fn, batch_fn=batch_fn,
      extra_fn=lambda: {"hard_pool": ctx["hard"]},
      restore_extra=lambda extra: ctx.update(hard=extra.get("hard_pool")))


def train_engine(config, workdir, engine, tokenizer, train, mesh, writer) -> dict:
  """Stage 0 (both phases): the frozen engine's params."""
  params = jax.device_get(run_stage(engine_stage(config, engine, tokenizer, train), config,
                                    workdir, mesh, writer).params)
  if config.engine.train.text_only_steps:
    stage = engine_stage(config, engine, tokenizer, train, text_only=True,
                         video_params=params["video"], text_params=params["text"])
    text = jax.device_get(run_stage(stage, config, workdir, mesh, writer).params)["text"]
    params = {"text": text, "video": params["video"]}
  return params


def restore_engine(config, workdir: str, engine) -> dict:
  """The finished stage-0 engine of a workdir (both phases)."""
  description = engine_description(config, engine.text.vocab_size)
  state = _engine_state(config, engine)
  params = restore_params(config, workdir, "engine", state, description,
                          joint_steps(config.engine.train))
  if config.engine.train.text_only_steps:
    text = restore_params(config, workdir, "engine_text",
                          _text_state(config, engine, state.params["text"]), description,
                          config.engine.train.text_only_steps)["text"]
    params = {"text": text, "video": params["video"]}
  return params


# ------------------------------------------------------------------- stage 1 (SFT)

def agent_description(config, vocab_size: int, refine: str, stage: str = "sft") -> dict:
  """What an agent checkpoint of `stage` (sft | grpo) must agree on to be restored: GRPO starts
  from the stage-1 policy, so its checkpoints carry the sft section too."""
  d = {"agent": config_lib.to_dict(config.agent), "refine": refine, "vocab_size": vocab_size,
       "engine": engine_description(config, vocab_size), "sft": config_lib.to_dict(config.sft)}
  return d | {"grpo": config_lib.to_dict(config.grpo)} if stage == "grpo" else d


def _sft_state(config, agent, engine_params=None):
  params = policy.init_agent(agent, config, jax.random.PRNGKey(config.seed + 1),
                             engine_params if config.agent.engine_inputs else None)
  return train_state.TrainState.create(apply_fn=agent.apply, params=params,
                                       tx=sft.optimizer(config.sft))


@dataclasses.dataclass
class Retrieval:
  """The frozen engine's view of a split: vectors, the original query's top results."""
  videos: np.ndarray        # [V, E]
  queries: np.ndarray       # [Q, E] original query vectors
  top_ids: np.ndarray       # [Q, depth]
  top_scores: np.ndarray    # [Q, depth]
  gt_score: np.ndarray      # [Q]


def engine_retrieval(config, engine, engine_params, split, depth: int) -> Retrieval:
  index_lib.check_top_k(depth, split.num_videos, "sft.hard_pool_depth")
  b = config.eval.batch_size
  videos = encode.encode_videos(engine, engine_params, split.features, split.num_frames, b)
  queries = encode.encode_queries(engine, engine_params, split.tokens, b)
  index = index_lib.ExactIndex.build(videos)
  out = [jax.device_get(_search(index, queries[i:i + b], depth))
         for i in range(0, len(queries), b)]
  gt_score = np.einsum("qe,qe->q", queries, videos[split.video_index])
  return Retrieval(videos, queries, np.concatenate([o[1] for o in out]),
                   np.concatenate([o[0] for o in out]), gt_score)


def ret_keys(config, retrieval: Retrieval, split):
  """Positive + mined hard negatives per query (METHOD.md §3): [Q, 1 + K, E], valid [Q, 1 + K]."""
  neg, valid = sft.hard_negative_pool(retrieval.top_scores, retrieval.top_ids,
                                      split.video_index, retrieval.gt_score,
                                      config.sft.hard_negatives, config.sft.ambiguity)
  ids = np.concatenate([split.video_index[:, None], neg], 1)
  valid = np.concatenate([np.ones((len(ids), 1), bool), valid], 1)
  return ids, valid


def sft_stage(config, name, agent, engine, engine_params, split, retrieval) -> Stage:
  cfg = config.sft
  key_ids, key_valid = ret_keys(config, retrieval, split)
  spans = sft.span_frames(split.times, split.frame_seconds[split.video_index],
                          split.num_frames[split.video_index])
  # Examples are (query, candidate video) pairs from the engine's top `candidate_depth` for the
  # original query (1 = the reference: the first retrieval only): the ground truth among them
  # is a matched example, the others are not. Both classes then look alike to the engine, as
  # they will at test time (a verifier trained on ground truths that the engine missed learns
  # "the engine likes it, so it is wrong").
  cand = retrieval.top_ids[:, :cfg.candidate_depth]
  is_gt = cand == split.video_index[:, None]
  pools = (np.argwhere(is_gt), np.argwhere(~is_gt))          # (query, rank) pairs
  if min(len(p) for p in pools) == 0:
    raise ValueError(f"{name}: no {'matched' if not len(pools[0]) else 'unmatched'} pairs in "
                     f"the engine's top-{cfg.candidate_depth} of the train split; SFT needs both")
  logging.info("%s: %d matched / %d not-matched (query, video) pairs from the engine's top-%d, "
               "balanced 1:1 in batches", name, len(pools[0]), len(pools[1]),
               cfg.candidate_depth)

  def batch_fn(step, state):
    del state
    rng = np.random.default_rng([config.seed, 23, step])
    half = cfg.batch_size // 2
    pairs = np.concatenate([pools[0][rng.integers(len(pools[0]), size=half)],
                            pools[1][rng.integers(len(pools[1]), size=cfg.batch_size - half)]])
    qi, vid = pairs[:, 0], cand[pairs[:, 0], pairs[:, 1]]
    return {"tokens": split.tokens[qi], "frames": split.features[vid],
            "num_frames": split.num_frames[vid], "matched": vid == split.video_index[qi],
            "span": spans[qi], "gt": split.video_index[qi],
            "ret_keys": retrieval.videos[key_ids[qi]], "ret_ids": key_ids[qi],
            "ret_valid": key_valid[qi]}

  corpus = jax.numpy.asarray(retrieval.videos) if cfg.corpus_negatives else None
  @functools.partial(jax.jit, donate_argnums=0)
  def step_fn(state, batch, rng):
    del rng
    loss_fn = functools.partial(sft.sft_loss, agent, engine, engine_params=engine_params,
                                batch=batch, cfg=cfg, num_latents=config.agent.num_latents,
                                corpus=corpus)
    grads, metrics = jax.grad(lambda p: loss_fn(agent_params=p), has_aux=True)(state.params)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return state.apply_gradients(grads=grads), metrics

  return Stage(name=name, steps=cfg.steps, state=_sft_state(config, agent, engine_params),
               description=agent_description(config, engine.text.vocab_size, agent.refine),
               step_fn=step_fn, batch_fn=batch_fn)


# ------------------------------------------------------------------ stage 2 (GRPO)

def episode_config(config, *, turns: int, mode: str, refine: str) -> EpisodeConfig:
  return EpisodeConfig(turns=turns, num_latents=config.agent.num_latents, refine=refine,
                       sigma=config.agent.sigma, mode=mode)


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


def grpo_stage(config, agent, engine, engine_params, ref_params, split, retrieval,
               corpus: Corpus) -> Stage:
  cfg = config.grpo
  key_ids, key_valid = ret_keys(config, retrieval, split)
  spec = episode_config(config, turns=cfg.turns, mode="sample", refine=agent.refine)
  state = train_state.TrainState.create(
      apply_fn=agent.apply, params=ref_params, tx=grpo.optimizer(cfg))

  queries = grpo_queries(retrieval.top_ids[:, 0] == split.video_index, cfg, config.seed)

  def batch_fn(step, state):
    del state
    qi = queries(step)
    return {"tokens": split.tokens[qi], "gt": split.video_index[qi], "gt_time": split.times[qi],
            "ret_keys": retrieval.videos[key_ids[qi]], "ret_valid": key_valid[qi]}

  @functools.partial(jax.jit, donate_argnums=0)
  def step_fn(state, batch, rng):
    loss_fn = functools.partial(grpo.grpo_loss, agent, engine, ref_params=ref_params,
                                engine_params=engine_params, corpus=corpus, batch=batch,
                                rng=rng, spec=spec, cfg=cfg)
    grads, metrics = jax.grad(lambda p: loss_fn(params=p), has_aux=True)(state.params)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return state.apply_gradients(grads=grads), metrics

  return Stage(name="grpo", steps=cfg.steps, state=state,
               description=agent_description(config, engine.text.vocab_size, agent.refine,
                                             "grpo"),
               step_fn=step_fn, batch_fn=batch_fn)


# ---------------------------------------------------------------------------- pipeline

@dataclasses.dataclass
class Models:
  engine: towers.DualEncoder
  engine_params: dict
  agents: dict              # stage name -> (Agent, params)


def check_before_compiling(config, workdir: str) -> None:
  """Bad combinations that would otherwise fail late: stage 2 needs stage 1's checkpoint."""
  defaults.validate(config)
  if "grpo" in config.stages and "sft" not in config.stages:
    ckpt = os.path.join(workdir, "checkpoints", "sft")
    if not (os.path.isdir(ckpt) and any(d.isdigit() for d in os.listdir(ckpt))):
      raise workdir_lib.WorkdirError(
          f"stage 2 (grpo) starts from the stage-1 policy, but {ckpt} holds no checkpoint and "
          "'sft' is not in config.stages")


def _evaluate_all(config, workdir: str, models: Models, split, mesh) -> dict:
  engine, engine_params = models.engine, models.engine_params
  videos = encode.encode_videos(engine, engine_params, split.features, split.num_frames,
                                config.eval.batch_size, name="encode corpus",
                                every_seconds=config.log.progress_seconds)
  index = index_lib.build_index(config, videos, mesh=mesh,
                                directory=os.path.join(workdir, "index", "scann"))
  corpus = Corpus.from_split(index, split)
  rows = []
  for row in config.eval.rows:
    if row == "engine_single_shot":
      rows.append(evaluate.engine_single_shot(config, engine, engine_params, split, index))
      continue
    stage, turns = {"agent_no_refine": ("sft", 1), "agent_hqr": ("sft_hqr", None),
                    "agent_sqr_stage1": ("sft", None), "agent_sqr_stage2": ("grpo", None)}[row]
    if stage not in models.agents:
      logging.info("row %s skipped: stage %s is not in config.stages", row, stage)
      continue
    agent, params = models.agents[stage]
    spec = episode_config(config, turns=turns or config.agent.turns, mode="greedy",
                          refine=agent.refine)
    rows.append(evaluate.agent_row(config, row, agent, params, engine, engine_params, split,
                                   corpus, spec, mesh=mesh))
  all_metrics = evaluate.write_outputs(workdir, rows, split)
  print(evaluate.format_table(all_metrics), flush=True)
  return all_metrics


def _agents(config, vocab_size: int) -> dict:
  return {"sft": policy.build_agent(config, vocab_size, "sqr"),
          "sft_hqr": policy.build_agent(config, vocab_size, "hqr"),
          "grpo": policy.build_agent(config, vocab_size, "sqr")}


def train_and_evaluate(config, workdir: str) -> dict:
  check_before_compiling(config, workdir)
  workdir_lib.prepare(config, workdir, mode="train")
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_sizes(config, mesh)
  tokenizer, splits = load_data(config, workdir)
  train, test = splits[config.data.train_split], splits[config.data.eval_split]
  engine = towers.build_engine(config, len(tokenizer))
  agents = _agents(config, len(tokenizer))
  models = Models(engine, None, {})
  with SummaryWriter(os.path.join(workdir, "tb")) as writer:
    engine_params = models.engine_params = train_engine(config, workdir, engine, tokenizer,
                                                         train, mesh, writer)
    retrieval = None
    if any(s in config.stages for s in ("sft", "sft_hqr", "grpo")):
      retrieval = engine_retrieval(config, engine, engine_params, train,
                                   config.sft.hard_pool_depth)
    for name in ("sft", "sft_hqr"):
      if name in config.stages:
        stage = sft_stage(config, name, agents[name], engine, engine_params, train, retrieval)
        models.agents[name] = (agents[name], jax.device_get(
            run_stage(stage, config, workdir, mesh, writer).params))
    if "grpo" in config.stages:
      agent = agents["grpo"]
      ref = models.agents.get("sft", (None, None))[1]
      if ref is None:
        ref = restore_params(config, workdir, "sft", _sft_state(config, agent),
                             agent_description(config, len(tokenizer), "sqr"),
                             config.sft.steps)
      train_index = index_lib.ExactIndex.build(retrieval.videos)
      stage = grpo_stage(config, agent, engine, engine_params, ref, train, retrieval,
                         Corpus.from_split(train_index, train))
      models.agents["grpo"] = (agent, jax.device_get(
          run_stage(stage, config, workdir, mesh, writer).params))
  return _evaluate_all(config, workdir, models, test, mesh)


def evaluate_workdir(config, workdir: str) -> dict:
  """--mode=eval: recomputes every output of a trained workdir from its checkpoints."""
  defaults.validate(config)
  workdir_lib.prepare(config, workdir, mode="eval")
  mesh = sharding.make_mesh(config.mesh)
  tokenizer, splits = load_data(config, workdir, splits=(config.data.eval_split,))
  engine = towers.build_engine(config, len(tokenizer))
  models = Models(engine, restore_engine(config, workdir, engine), {})
  agents = _agents(config, len(tokenizer))
  for name in ("sft", "sft_hqr", "grpo"):
    if name in config.stages:
      agent = agents[name]
      description = agent_description(config, len(tokenizer), agent.refine,
                                      "grpo" if name == "grpo" else "sft")
      steps = config.grpo.steps if name == "grpo" else config.sft.steps
      state = train_state.TrainState.create(
          apply_fn=agent.apply, params=policy.init_agent(agent, config, jax.random.PRNGKey(0)),
          tx=grpo.optimizer(config.grpo) if name == "grpo" else sft.optimizer(config.sft))
      models.agents[name] = (agent, restore_params(config, workdir, name, state, description,
                                                   steps))
  return _evaluate_all(config, workdir, models, splits[config.data.eval_split], mesh)
