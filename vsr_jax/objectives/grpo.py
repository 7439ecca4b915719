"""Stage 2: group-relative policy optimisation over whole multi-turn episodes.

Advantage estimators and loss aggregations are registered functions chosen by name
(config.grpo.advantage, config.grpo.aggregation), so GRPO, Dr.GRPO and RLOO differ in a line.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from vsr_jax import rollout
from vsr_jax.objectives import rewards


# ------------------------------------------------------------------ advantages: r [G, B]

def grpo_advantage(r, eps: float = 1e-4):
  """(r - group mean) / (unbiased group std + eps)."""
  mean = r.mean(0, keepdims=True)
  std = jnp.sqrt(jnp.sum(jnp.square(r - mean), 0, keepdims=True) / (r.shape[0] - 1))
  return (r - mean) / (std + eps)


def dr_grpo_advantage(r, eps: float = 1e-4):
  """Dr. GRPO: no division by the group's std."""
  del eps
  return r - r.mean(0, keepdims=True)


def rloo_advantage(r, eps: float = 1e-4):
  """Leave-one-out baseline: r_i - mean of the other G - 1 rewards."""
  del eps
  G = r.shape[0]
  return r - (r.sum(0, keepdims=True) - r) / (G - 1)


ADVANTAGES = {"grpo": grpo_advantage, "dr_grpo": dr_grpo_advantage, "rloo": rloo_advantage}


# ------------------------------------------------------------------ per-action loss

def k3_kl(logp, ref_logp):
  """Schulman's k3 estimator of KL(pi || ref) from the taken action's log-probs."""
  d = ref_logp - logp
  return jnp.exp(d) - d - 1.0


def clipped_surrogate(logp, old_logp, adv, epsilon: float):
  ratio = jnp.exp(logp - old_logp)
  return -jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon) * adv)


def action_losses(logp, old_logp, ref_logp, adv, *, epsilon: float, beta: float):
  """Per action: -min(rho A, clip(rho) A) + beta * k3 KL. All arrays broadcast together."""
  return clipped_surrogate(logp, old_logp, adv, epsilon) + beta * k3_kl(logp, ref_logp)


# ------------------------------------------------------------------ aggregation: [R, A] + mask

def grpo_aggregate(losses, mask, max_actions: int):
  """Mean over each rollout's actions, then mean over rollouts (the reference 'grpo')."""
  del max_actions
  per_rollout = jnp.sum(losses * mask, 1) / jnp.maximum(mask.sum(1), 1.0)
  return jnp.mean(per_rollout)


def dr_grpo_aggregate(losses, mask, max_actions: int):
  """Dr. GRPO: sum over actions divided by a constant (the most actions an episode can take)."""
  return jnp.mean(jnp.sum(losses * mask, 1) / max_actions)


def token_mean_aggregate(losses, mask, max_actions: int):
  """DAPO's token-level mean: every action of the batch weighs the same."""
  del max_actions
  return jnp.sum(losses * mask) / jnp.maximum(mask.sum(), 1.0)


AGGREGATIONS = {"grpo": grpo_aggregate, "dr_grpo": dr_grpo_aggregate,
                "token_mean": token_mean_aggregate}


def episode_actions(steps, ref_steps):
  """Flattens an episode's actions: (logp, ref_logp, mask), each [B, A].

  Per turn: the verdict (turns taken), the span (turns that ground), each of the N refinement
  latents or words (turns that refine).
  """
  def per_turn(field, mask_field):
    lp, ref = steps[field], ref_steps[field]
    mask = steps[mask_field]
    if lp.ndim == 3:                         # [T, B, N]
      mask = jnp.broadcast_to(mask[..., None], lp.shape)
      lp, ref, mask = (jnp.moveaxis(x, 0, 1).reshape(x.shape[1], -1) for x in (lp, ref, mask))
    else:                                    # [T, B]
      lp, ref, mask = (x.T for x in (lp, ref, mask))
    return lp, ref, mask

  parts = [per_turn("verdict_logp", "active"), per_turn("span_logp", "grounds"),
           per_turn("refine_logp", "refines")]
  logp = jnp.concatenate([p[0] for p in parts], 1)
  ref = jnp.concatenate([p[1] for p in parts], 1)
  mask = jnp.concatenate([p[2] for p in parts], 1).astype(jnp.float32)
  return logp, ref, mask


# ------------------------------------------------------------------ the stage-2 objective

def optimizer(cfg):
  """AdamW, constant learning rate after a linear warm-up, global-norm clipping."""
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, cfg.learning_rate, max(1, cfg.warmup_steps)),
       optax.constant_schedule(cfg.learning_rate)], [max(1, cfg.warmup_steps)])
  return optax.chain(optax.clip_by_global_norm(cfg.clip_grad_norm),
                     optax.adamw(schedule, weight_decay=cfg.weight_decay))


def grpo_loss(agent, engine, params, ref_params, engine_params, corpus, batch, rng, spec, cfg):
  """One GRPO objective over G sampled episodes per query (vmap over the group).

  The episodes are sampled with `params` (one update per batch of rollouts, so the old
  policy's log-probs are these, held fixed); the reference policy's log-probs replay the same
  trajectories. Returns (loss, metrics).
  """
  G = cfg.group_size
  tokens, gt = batch["tokens"], batch["gt"]

  def sample(key):
    return rollout.episode(agent, engine, params, engine_params, corpus, tokens, gt, key, spec)

  steps = jax.vmap(sample)(jax.random.split(rng, G))                     # [G, T, B, ...]
  forced_spec = dataclasses.replace(spec, mode="forced")

  def replay(forced):
    return rollout.episode(agent, engine, ref_params, engine_params, corpus, tokens, gt, rng,
                           forced_spec, forced=forced)

  ref_steps = jax.vmap(replay)(rollout.forced_actions(steps))
  reward, parts = jax.vmap(lambda s: rewards.total_reward(s, batch, cfg))(steps)   # [G, B]
  adv = ADVANTAGES[cfg.advantage](reward)
  logp, ref_logp, mask = jax.vmap(episode_actions)(steps, ref_steps)             # [G, B, A]
  ref_logp = jax.lax.stop_gradient(ref_logp)
  losses = action_losses(logp, jax.lax.stop_gradient(logp), ref_logp, adv[..., None],
                         epsilon=cfg.epsilon, beta=cfg.beta)
  losses = jnp.where(mask > 0, losses, 0.0)
  A = logp.shape[-1]
  loss = AGGREGATIONS[cfg.aggregation](losses.reshape(-1, A), mask.reshape(-1, A), A)
  final_rank = steps["rank"][:, -1]
  metrics = {
      "loss": loss, "reward": reward.mean(), "reward_std": jnp.std(reward, axis=0, ddof=1).mean(),
      "kl": jnp.sum(jnp.where(mask > 0, k3_kl(logp, ref_logp), 0.0)) / jnp.maximum(
          mask.sum(), 1.0),
      "vr_r1": jnp.mean(final_rank == 1), "turns": jnp.mean(steps["active"].sum(1)),
      "matched": jnp.mean(steps["verdict"][:, -1] == 0),
  }
  metrics.update({f"reward_{k}": v.mean() for k, v in parts.items()})
  return loss, metrics
