"""Task rewards of a finished episode, each a function chosen by name (METHOD.md §3).

A reward takes the episode's per-turn outputs (`rollout.episode`, [T, B, ...]) and the
batch's ground truth, and returns [B]. The total is sum_i w_i r_i with weights from
`config.grpo.rewards` (a weight of 0 switches a reward off). Rewards are registered by name
(vsr_jax/registry.py): a new one is a file with `@registry.REWARDS.register("name")`, imported
through config.imports, and a weight in config.grpo.rewards.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vsr_jax import registry
from vsr_jax.agent.policy import MATCHED
from vsr_jax.objectives.contrastive import info_nce


def _iou(pred, gt):
  inter = jnp.maximum(0.0, jnp.minimum(pred[..., 1], gt[..., 1]) -
                      jnp.maximum(pred[..., 0], gt[..., 0]))
  union = jnp.maximum(pred[..., 1], gt[..., 1]) - jnp.minimum(pred[..., 0], gt[..., 0])
  return jnp.where(union > 0, inter / jnp.maximum(union, 1e-9), 0.0)


@registry.REWARDS.register("answer")
def answer(steps, batch, cfg):
  """+1 when a verdict equals (retrieved == ground truth), else -1; mean over the turns taken."""
  right = (steps["verdict"] == MATCHED) == (steps["retrieved"] == batch["gt"][None])
  active = steps["active"].astype(jnp.float32)
  per_turn = jnp.where(right, 1.0, -1.0) * active
  return per_turn.sum(0) / jnp.maximum(active.sum(0), 1.0)


@registry.REWARDS.register("grounding_iou")
def grounding_iou(steps, batch, cfg):
  """IoU of the final span when correctly matched; cfg.not_matched_iou (the reference: 0.5) for
  a correct final not_matched; 0 when the final verdict is wrong."""
  matched = steps["verdict"][-1] == MATCHED
  hit = steps["retrieved"][-1] == batch["gt"]
  iou = _iou(steps["pred_time"][-1], batch["gt_time"])
  return jnp.where(matched & hit, iou, jnp.where(~matched & ~hit, cfg.not_matched_iou, 0.0))


@registry.REWARDS.register("vcmr")
def vcmr(steps, batch, cfg):
  """What VCMR cfg.vcmr_iou/R@1 counts: 1 when the final verdict is matched on the right video
  and the span's IoU reaches cfg.vcmr_iou, else 0. Unlike `answer`, a rejection earns nothing
  by itself: rejecting pays only when a later turn finds and grounds the video."""
  matched = steps["verdict"][-1] == MATCHED
  hit = steps["retrieved"][-1] == batch["gt"]
  iou = _iou(steps["pred_time"][-1], batch["gt_time"])
  return (matched & hit & (iou >= cfg.vcmr_iou)).astype(jnp.float32)


def _p_gt(query, batch, cfg):
  """Softmax probability of the positive among it and its hard negatives (= exp(-L_ret))."""
  keys = batch["ret_keys"]                                   # [B, 1 + K, E], positive first
  return jnp.exp(-info_nce(query, keys, jnp.zeros(query.shape[0], jnp.int32),
                           cfg.temperature, allowed=batch.get("ret_valid")))


@registry.REWARDS.register("retrieval_exp_neg_ret")
def retrieval_exp_neg_ret(steps, batch, cfg):
  """The paper's retrieval quality: exp(-L_ret) of the final query."""
  return _p_gt(steps["final_query"], batch, cfg)


@registry.REWARDS.register("retrieval_delta_p")
def retrieval_delta_p(steps, batch, cfg):
  """The reference code's: p(gt) under the final query minus under the original one."""
  return _p_gt(steps["final_query"], batch, cfg) - _p_gt(steps["orig_query"], batch, cfg)


def total_reward(steps, batch, cfg):
  """(total [B], {name: [B]}) for the weights in cfg.rewards (config.grpo)."""
  parts = {}
  total = 0.0
  for name, weight in cfg.rewards.items():
    reward = registry.REWARDS.get(name, f"grpo.rewards.{name}")
    if weight:
      parts[name] = jax.lax.stop_gradient(reward(steps, batch, cfg))
      total = total + weight * parts[name]
  return total, parts
