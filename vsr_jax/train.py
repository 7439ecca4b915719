"""train_and_evaluate(config, workdir): data -> stage 0 (engine) -> index -> evaluation.

Every stage checkpoints its state; a stage that finished is restored, one that was
interrupted resumes from its last checkpoint, and `evaluate_workdir` re-evaluates from the
checkpoints alone.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax.training import train_state
from tensorboardX import SummaryWriter

from vsr_jax import config_lib, defaults, evaluate, sharding
from vsr_jax import workdir as workdir_lib
from vsr_jax.data import batching, store
from vsr_jax.engine import encode, index as index_lib, towers
from vsr_jax.objectives import contrastive
from vsr_jax.progress import Progress


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite value; the message names the step and the term."""


# ------------------------------------------------------------------------------- data

def data_dir(config, workdir: str) -> str:
  return config.data.dir or os.path.join(workdir, "data")


def load_data(config, workdir: str, *, splits=None):
  """Generates (synthetic) or finds the dataset; returns the tokenizer and the loaded splits."""
  directory = data_dir(config, workdir)
  if config.data.source == "synthetic":
    store.write_synthetic(config.data, directory, progress_seconds=config.log.progress_seconds)
  tokenizer = store.load_tokenizer(directory, config.data.train_split)
  splits = splits or (config.data.train_split, config.data.eval_split)
  loaded = {s: store.load_split(directory, s, config.data, tokenizer,
                                progress_seconds=config.log.progress_seconds) for s in splits}
  return tokenizer, loaded


# ----------------------------------------------------------------------------- stage 0

def engine_description(config, vocab_size: int) -> dict:
  """What an engine checkpoint must agree on to be restored."""
  return {"engine": config_lib.to_dict(config.engine), "vocab_size": vocab_size,
          "max_query_len": config.data.max_query_len, "feature_dim": config.data.feature_dim,
          "seed": config.seed}


def _engine_optimizer(cfg):
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, max(1, cfg.warmup_steps), max(cfg.steps, cfg.warmup_steps + 1))
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, weight_decay=cfg.weight_decay))


def mine_hard_negatives(engine, params, split, top_k: int, batch: int) -> np.ndarray:
  """[Q, top_k] videos the current engine ranks highest for each caption, its own excluded."""
  videos = encode.encode_videos(engine, params, split.features, split.num_frames, batch)
  queries = encode.encode_queries(engine, params, split.tokens, batch)
  k = min(top_k + 1, split.num_videos)
  index = index_lib.ExactIndex.build(videos)
  ids = np.concatenate([np.asarray(jax.jit(lambda ix, q: ix.search(q, k)[1])(index, queries[i:i + batch]))
                        for i in range(0, len(queries), batch)])
  own = ids == split.video_index[:, None]
  # Drop each row's own video (or its last entry when the own video is not in the list).
  keep = ~own
  keep[~own.any(1), -1] = False
  return ids[keep].reshape(len(ids), k - 1)[:, :top_k].astype(np.int32)


def _pretrain_pool(config, tokenizer, train, pool_index: int):
  """The videos stage 0 trains on for a while: a fresh synthetic pool, or the train split."""
  if config.engine.train.source == "train":
    return train
  # Each pool starts far into the engine's own stream: pools never share a family.
  return store.synthetic_pool(config.data, tokenizer, split="pretrain",
                              num_videos=config.engine.train.pool_videos,
                              first_family=pool_index * 1_000_000)


def pretrain_engine(config, workdir: str, engine, tokenizer, train, mesh, writer) -> dict:
  """Stage 0: contrastive pretraining of both towers; returns the (then frozen) params.

  Every `mine_every` steps the engine mines hard negatives with its current weights, over a
  fresh pool of the synthetic world's pretraining stream (source='stream': a generic engine
  that never saw the benchmark's videos) or over the train split (source='train').
  """
  cfg = config.engine.train
  ckpt = workdir_lib.Checkpoints(workdir, "engine", config.checkpoint.max_to_keep)
  description = engine_description(config, engine.text.vocab_size)
  rng = jax.random.PRNGKey(config.seed)
  params = towers.init_engine(engine, config, rng)
  state = train_state.TrainState.create(apply_fn=engine.apply, params=params,
                                        tx=_engine_optimizer(cfg))
  hard_pool = None
  step = ckpt.latest_step()
  if step is not None:
    state = ckpt.restore(step, state, description)
    hard_pool = ckpt.restore_extra(step).get("hard_pool")
    logging.info("stage 0: restored engine checkpoint at step %d", step)
  start = int(state.step)
  if start >= cfg.steps:
    ckpt.close()
    return jax.device_get(state.params)
  # Resumed in the middle of a pool: the same pool again (generation is deterministic).
  pool = None if start % cfg.mine_every == 0 else _pretrain_pool(
      config, tokenizer, train, start // cfg.mine_every)

  repl, data_sharding = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  state = jax.device_put(state, repl)

  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state, batch):
    def loss_fn(params):
      q = engine.apply({"params": params}, batch["tokens"], method=towers.DualEncoder.encode_text)
      v = engine.apply({"params": params}, batch["features"], batch["num_frames"],
                       method=towers.DualEncoder.encode_video)
      return contrastive.engine_loss(q, v, batch["video_ids"], cfg.temperature)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return state.apply_gradients(grads=grads), metrics

  progress = Progress("stage 0 (engine)", cfg.steps, "steps", config.log.progress_seconds)
  for step in range(start, cfg.steps):
    # Mining is deterministic given the weights, so a resumed run mines again at a pool
    # boundary; the checkpointed negatives serve a resume in the middle of a pool.
    if step % cfg.mine_every == 0 or hard_pool is None:
      pool = _pretrain_pool(config, tokenizer, train, step // cfg.mine_every)
      hard_pool = mine_hard_negatives(engine, jax.device_get(state.params), pool,
                                      min(cfg.mine_top_k, pool.num_videos - 1),
                                      config.eval.batch_size)
    batch = batching.engine_batch(pool, step, seed=config.seed, batch_size=cfg.batch_size,
                                  fine_keep=cfg.fine_keep, hard_pool=hard_pool,
                                  hard_negatives=cfg.hard_negatives)
    batch = jax.device_put(batch, data_sharding)
    new_state, metrics = train_step(state, batch)
    metrics = jax.device_get(metrics)
    for term, value in metrics.items():
      if not np.isfinite(value):
        raise NonFiniteError(
            f"stage 0 step {step}: {term} is {value}; the last good checkpoint in "
            f"{ckpt.directory} is kept (step {ckpt.latest_step()})")
    state = new_state
    done = step + 1
    if done % config.log.every_steps == 0 or done == cfg.steps:
      for term, value in metrics.items():
        writer.add_scalar(f"stage0/{term}", float(value), done)
      progress.update(done, f"loss {metrics['loss']:.3f} batch_r1 {metrics['batch_r1']:.2f}")
    if done % config.checkpoint.every_steps == 0 or done == cfg.steps:
      ckpt.save(done, state, description, extra={"hard_pool": hard_pool})
  ckpt.close()
  return jax.device_get(state.params)


def restore_engine(config, workdir: str, engine) -> dict:
  """The finished stage-0 engine of a workdir (for evaluation)."""
  ckpt = workdir_lib.Checkpoints(workdir, "engine", config.checkpoint.max_to_keep)
  step = ckpt.latest_step()
  if step is None:
    raise workdir_lib.WorkdirError(
        f"{ckpt.directory} holds no engine checkpoint: train this workdir first")
  if step < config.engine.train.steps:
    raise workdir_lib.WorkdirError(
        f"{ckpt.directory}: the engine checkpoint is at step {step} of "
        f"{config.engine.train.steps}; resume training (--mode=train) before evaluating")
  params = towers.init_engine(engine, config, jax.random.PRNGKey(0))
  state = train_state.TrainState.create(apply_fn=engine.apply, params=params,
                                        tx=_engine_optimizer(config.engine.train))
  restored = ckpt.restore(step, state, engine_description(config, engine.text.vocab_size))
  ckpt.close()
  return jax.device_get(restored.params)


# ---------------------------------------------------------------------------- pipeline

def _evaluate_all(config, workdir: str, engine, params, split, mesh) -> dict:
  videos = encode.encode_videos(engine, params, split.features, split.num_frames,
                                config.eval.batch_size, name="encode corpus",
                                every_seconds=config.log.progress_seconds)
  index = index_lib.build_index(config, videos, mesh=mesh,
                                directory=os.path.join(workdir, "index", "scann"))
  rows = [evaluate.engine_single_shot(config, engine, params, split, index)]
  all_metrics = evaluate.write_outputs(workdir, rows, split)
  print(evaluate.format_table(all_metrics), flush=True)
  return all_metrics


def train_and_evaluate(config, workdir: str) -> dict:
  defaults.validate(config)
  workdir_lib.prepare(config, workdir, mode="train")
  mesh = sharding.make_mesh(config.mesh)
  if config.engine.train.batch_size % mesh.size:
    raise config_lib.ConfigError(
        f"config.engine.train.batch_size={config.engine.train.batch_size} must be divisible "
        f"by the {mesh.size} devices of the mesh")
  tokenizer, splits = load_data(config, workdir)
  train, test = splits[config.data.train_split], splits[config.data.eval_split]
  engine = towers.build_engine(config, len(tokenizer))
  with SummaryWriter(os.path.join(workdir, "tb")) as writer:
    params = pretrain_engine(config, workdir, engine, tokenizer, train, mesh, writer)
  return _evaluate_all(config, workdir, engine, params, test, mesh)


def evaluate_workdir(config, workdir: str) -> dict:
  """--mode=eval: recomputes every output of a trained workdir from its checkpoints."""
  defaults.validate(config)
  workdir_lib.prepare(config, workdir, mode="eval")
  mesh = sharding.make_mesh(config.mesh)
  tokenizer, splits = load_data(config, workdir, splits=(config.data.eval_split,))
  engine = towers.build_engine(config, len(tokenizer))
  params = restore_engine(config, workdir, engine)
  return _evaluate_all(config, workdir, engine, params, splits[config.data.eval_split], mesh)
