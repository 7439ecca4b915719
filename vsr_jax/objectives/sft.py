"""Stage 1, the supervised cold start (METHOD.md §3):

  L = L_verify + 1[matched] L_time + 0.3 L_ret

on first-turn examples (the original query's top-1, matched / not-matched balanced 1:1).
L_verify: cross-entropy of the verdict; L_time: cross-entropy of the ground-truth (start, end)
frame pair; L_ret: InfoNCE (tau = 0.1) of the refined query vector against the positive video
and hard negatives mined from the frozen engine's top-200. It reaches the agent through the
frozen engine's text tower.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from vsr_jax import registry, rollout
from vsr_jax.agent.policy import MATCHED, NOT_MATCHED, Agent
from vsr_jax.engine.towers import DualEncoder

PROJECTORS = ("refine_words_ln", "refine_in", "refine_ln", "refine_out", "latent_in_ln",
              "latent_in", "append_ln", "append")


def soft_tokens(agent: Agent, engine: DualEncoder, agent_params, engine_params, out,
                refine: str = ""):
  """The refinement tokens for the engine, differentiable for both refiners.

  `refine`: the registered refiner (vsr_jax/agent/refiners.py); '' -> the one of the agent's
  head (sqr | hqr).
  """
  refiner = registry.REFINERS.get(refine or agent.refine)
  return refiner.train_tokens(agent, engine, agent_params, engine_params, out)


def retrieval_loss(q, batch, temperature: float, corpus=None, orig=None, ambiguity: float = 0.0):
  """InfoNCE of refined query vectors q [B, E] against the positive and its hard negatives
  (batch['ret_keys'] [B, 1 + K, E], positive first; batch['ret_valid']) and, when given,
  every other video of the corpus [V, E].

  The corpus term leaves out the videos already among the keys (batch['ret_ids'] [B, 1 + K]:
  the positive and the hard negatives, counted once) and, with the original query vectors
  orig [B, E], the near-ties the hard-negative pool dropped (|orig.v - orig.v_gt| < ambiguity).
  """
  B = q.shape[0]
  logits = jnp.einsum("be,bke->bk", q, batch["ret_keys"]) / temperature
  logits = jnp.where(batch["ret_valid"], logits, -jnp.inf)
  if corpus is not None:
    extra = q @ corpus.T / temperature
    rows = jnp.arange(B)[:, None]
    keyed = jnp.zeros(extra.shape, bool).at[rows, batch["ret_ids"]].max(batch["ret_valid"])
    keyed = keyed.at[jnp.arange(B), batch["gt"]].set(True)
    if orig is not None:
      s0 = orig @ corpus.T
      gt_s0 = jnp.take_along_axis(s0, batch["gt"][:, None], 1)
      keyed = keyed | (jnp.abs(s0 - gt_s0) < ambiguity)
    logits = jnp.concatenate([logits, jnp.where(keyed, -jnp.inf, extra)], 1)
  loss = jax.nn.logsumexp(logits, 1) - logits[:, 0]
  return loss, jnp.argmax(logits, 1) == 0


def sft_loss(agent: Agent, engine: DualEncoder, agent_params, engine_params, batch, cfg,
             num_latents: int, corpus=None, refine: str = "", matched_first: int = 0,
             ret_rows: int = 0):
  """batch: tokens [B, L], frames [B, F, D], num_frames [B], matched [B], span [B, 2] frames,
  ret_keys [B, 1 + K, E] (positive first), ret_ids and ret_valid [B, 1 + K], gt [B] (video ids).
  corpus [V, E]: the train corpus' video vectors, extra negatives of L_ret (or None).
  batch["orig_query"] [B, E] (optional): the engine's vectors of the tokens, when the caller
  has them (the frozen engine's view of the train split): not encoded again.
  matched_first: the caller's promise that the batch's first rows are this many matched
  examples (the sft stage's batches put their matched half first). L_ret counts only
  not-matched rows, so those rows' refined queries, the frozen engine's forward and backward
  through their soft tokens, are not computed: the same loss, for less of the engine's work.
  ret_rows > 0: L_ret over the first `ret_rows` of the rows after them only (the batch's rows
  are drawn at random), scaled by (B - matched_first) / ret_rows: the same expected gradient."""
  q0 = batch.get("orig_query")
  if q0 is None:
    q0 = engine.apply({"params": engine_params}, batch["tokens"], method=DualEncoder.encode_text)
  view = rollout.engine_view(agent, engine, engine_params, batch["frames"], q0)
  B = batch["tokens"].shape[0]
  stop = matched_first + ret_rows if ret_rows else B
  # The refinement (HQR's word rollout, SQR's latents) of the rows L_ret reads only.
  out = agent.apply({"params": agent_params}, batch["tokens"], batch["frames"],
                    batch["num_frames"], num_latents=num_latents, mode="greedy", sigma=1.0,
                    method=Agent.act, refine_rows=(matched_first, stop), **view)
  F = out["span"].shape[1]
  matched = batch["matched"].astype(jnp.float32)
  label = jnp.where(batch["matched"], MATCHED, NOT_MATCHED)
  verify_ce = -jnp.take_along_axis(jax.nn.log_softmax(out["verify"]), label[:, None], 1)[:, 0]
  flat = batch["span"][:, 0] * F + batch["span"][:, 1]
  span_lp = jax.nn.log_softmax(out["span"].reshape(B, F * F))
  time_ce = -jnp.take_along_axis(span_lp, flat[:, None], 1)[:, 0]
  time_ce = jnp.where(batch["matched"], time_ce, 0.0)   # -inf spans of unmatched videos
  metrics = {
      "verify_ce": verify_ce.mean(),
      "verify_acc": jnp.mean((jnp.argmax(out["verify"], -1) == label)),
      "time_ce": jnp.sum(time_ce) / jnp.maximum(matched.sum(), 1.0),
  }
  loss = verify_ce.mean() + cfg.time_weight * jnp.mean(time_ce)
  if num_latents:
    rows = lambda x: x[matched_first:stop]
    soft = soft_tokens(agent, engine, agent_params, engine_params, out, refine)
    sub = {k: rows(batch[k]) for k in ("tokens", "ret_keys", "ret_valid", "ret_ids", "gt")}
    q = engine.apply({"params": engine_params}, sub["tokens"], soft,
                     method=DualEncoder.encode_text)
    ret, top1 = retrieval_loss(q, sub, cfg.temperature, corpus, rows(q0), cfg.ambiguity)
    refined = 1.0 - rows(matched)
    scale = (B - matched_first) / (stop - matched_first)     # 1 with every row after them
    loss = loss + cfg.ret_weight * scale * jnp.sum(ret * refined) / B
    metrics["ret_loss"] = jnp.sum(ret * refined) / jnp.maximum(refined.sum(), 1.0)
    metrics["ret_r1"] = jnp.sum(top1 * refined) / jnp.maximum(refined.sum(), 1.0)
  metrics["loss"] = loss
  return loss, metrics


def optimizer(cfg):
  """AdamW with its own learning rate for the SQR projectors (reference: 2e-5 vs 5e-5)."""
  def schedule(lr):
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(1, cfg.warmup_steps),
                                              max(cfg.steps, cfg.warmup_steps + 1))

  def label(params):
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict(
        {k: "projector" if k[0] in PROJECTORS else "body" for k in flat})

  return optax.chain(
      optax.clip_by_global_norm(cfg.clip_grad_norm),
      optax.multi_transform({
          "body": optax.adamw(schedule(cfg.learning_rate), weight_decay=cfg.weight_decay),
          "projector": optax.adamw(schedule(cfg.projector_learning_rate),
                                   weight_decay=cfg.weight_decay)}, label))


# ------------------------------------------------------------------ host-side data

def hard_negative_pool(scores: np.ndarray, ids: np.ndarray, gt: np.ndarray, gt_score: np.ndarray,
                       num: int, ambiguity: float):
  """From each query's engine top-k (ids, scores [Q, k]): the first `num` videos that are not
  the ground truth and not within `ambiguity` of its score. Returns ids [Q, num], valid mask."""
  ok = (ids != gt[:, None]) & (np.abs(scores - gt_score[:, None]) >= ambiguity)
  order = np.argsort(~ok, axis=1, kind="stable")[:, :num]
  picked = np.take_along_axis(ids, order, 1)
  valid = np.take_along_axis(ok, order, 1)
  return np.where(valid, picked, 0), valid


def span_frames(times: np.ndarray, frame_seconds: np.ndarray, num_frames: np.ndarray):
  """Ground-truth (start, end) seconds -> inclusive frame indices inside the video."""
  start = np.floor(times[:, 0] / frame_seconds).astype(np.int32)
  end = np.ceil(times[:, 1] / frame_seconds).astype(np.int32) - 1
  start = np.clip(start, 0, num_frames - 1)
  end = np.clip(np.maximum(end, start), 0, num_frames - 1)
  return np.stack([start, end], 1)
