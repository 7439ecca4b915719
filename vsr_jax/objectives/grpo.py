"""Stage 2: group-relative policy optimisation over whole multi-turn episodes.

Advantage estimators and loss aggregations are registered functions chosen by name
(config.grpo.advantage, config.grpo.aggregation), so GRPO, Dr.GRPO and RLOO differ in a line.
A train step samples a batch of rollouts once (`sample_rollouts`) and takes
config.grpo.updates_per_batch updates on it (`make_train_step`), each replaying the recorded
episodes with the current params against the sampling policy's log-probs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from vsr_jax import registry, rollout
from vsr_jax.objectives import rewards


# ------------------------------------------------------------------ advantages: r [G, B]

@registry.ADVANTAGES.register("grpo")
def grpo_advantage(r, eps: float = 1e-4):
  """(r - group mean) / (unbiased group std + eps)."""
  mean = r.mean(0, keepdims=True)
  std = jnp.sqrt(jnp.sum(jnp.square(r - mean), 0, keepdims=True) / (r.shape[0] - 1))
  return (r - mean) / (std + eps)


@registry.ADVANTAGES.register("dr_grpo")
def dr_grpo_advantage(r, eps: float = 1e-4):
  """Dr. GRPO: no division by the group's std."""
  del eps
  return r - r.mean(0, keepdims=True)


@registry.ADVANTAGES.register("rloo")
def rloo_advantage(r, eps: float = 1e-4):
  """Leave-one-out baseline: r_i - mean of the other G - 1 rewards."""
  del eps
  G = r.shape[0]
  return r - (r.sum(0, keepdims=True) - r) / (G - 1)


ADVANTAGES = registry.ADVANTAGES     # name -> estimator (ADVANTAGES["rloo"])


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
  surrogate = clipped_surrogate(logp, old_logp, adv, epsilon)
  if not beta:     # no KL term at all: 0 * an overflowed k3 (a far-off reference) is NaN
    return surrogate
  return surrogate + beta * k3_kl(logp, ref_logp)


# ------------------------------------------------------------------ aggregation: [R, A] + mask

@registry.AGGREGATIONS.register("grpo")
def grpo_aggregate(losses, mask, max_actions: int):
  """Mean over each rollout's actions, then mean over rollouts (the reference 'grpo')."""
  del max_actions
  per_rollout = jnp.sum(losses * mask, 1) / jnp.maximum(mask.sum(1), 1.0)
  return jnp.mean(per_rollout)


@registry.AGGREGATIONS.register("dr_grpo")
def dr_grpo_aggregate(losses, mask, max_actions: int):
  """Dr. GRPO: sum over actions divided by a constant (the most actions an episode can take)."""
  return jnp.mean(jnp.sum(losses * mask, 1) / max_actions)


@registry.AGGREGATIONS.register("token_mean")
def token_mean_aggregate(losses, mask, max_actions: int):
  """DAPO's token-level mean: every action of the batch weighs the same."""
  del max_actions
  return jnp.sum(losses * mask) / jnp.maximum(mask.sum(), 1.0)


AGGREGATIONS = registry.AGGREGATIONS


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


def replay(agent, engine, params, engine_params, corpus, batch, forced, rng, spec):
  """The recorded episodes (forced [G, T, B, ...]) under `params`: the same observations and
  actions (mode 'forced'), so their log-probs are this policy's on the sampled trajectories."""
  forced_spec = dataclasses.replace(spec, mode="forced")

  def one(f):
    return rollout.episode(agent, engine, params, engine_params, corpus, batch["tokens"],
                           batch["gt"], rng, forced_spec, forced=f,
                           orig_query=batch.get("orig_query"))

  return jax.vmap(one)(forced)


def replay_logp(agent, engine, params, engine_params, corpus, batch, forced, rng, spec):
  """Per-action log-probs [G, B, A] of the recorded episodes under `params`."""
  steps = replay(agent, engine, params, engine_params, corpus, batch, forced, rng, spec)
  return jax.vmap(episode_actions)(steps, steps)[0]


def sample_rollouts(agent, engine, params, ref_params, engine_params, corpus, batch, rng, spec,
                    cfg):
  """G episodes per query sampled with `params` (vmap over the group): a batch of rollouts.

  Returns (rollouts, metrics). rollouts: the recorded actions ('forced', [G, T, B, ...]), the
  sampling policy's per-action log-probs ('old_logp' [G, B, A]; differentiable in params, which
  grpo_loss's ratio-1 objective uses, `objective` holds them fixed), the reference policy's on
  the same trajectories ('ref_logp'), the action mask and the advantages ('adv' [G, B]).
  """
  G = cfg.group_size

  def sample(key):
    return rollout.episode(agent, engine, params, engine_params, corpus, batch["tokens"],
                           batch["gt"], key, spec, orig_query=batch.get("orig_query"))

  steps = jax.vmap(sample)(jax.random.split(rng, G))                     # [G, T, B, ...]
  # The recorded actions and observations are the environment's from here on.
  forced = jax.lax.stop_gradient(rollout.forced_actions(steps))
  ref_steps = replay(agent, engine, ref_params, engine_params, corpus, batch, forced, rng, spec)
  reward, parts = jax.vmap(lambda s: rewards.total_reward(s, batch, cfg))(steps)   # [G, B]
  logp, ref_logp, mask = jax.vmap(episode_actions)(steps, ref_steps)             # [G, B, A]
  rollouts = {"forced": forced, "old_logp": logp, "ref_logp": jax.lax.stop_gradient(ref_logp),
              "mask": mask, "adv": ADVANTAGES[cfg.advantage](reward)}
  final_rank = steps["rank"][:, -1]
  metrics = {
      "reward": reward.mean(), "reward_std": jnp.std(reward, axis=0, ddof=1).mean(),
      "vr_r1": jnp.mean(final_rank == 1), "turns": jnp.mean(steps["active"].sum(1)),
      "matched": jnp.mean(steps["verdict"][:, -1] == 0),
  }
  metrics.update({f"reward_{k}": v.mean() for k, v in parts.items()})
  return rollouts, metrics


def clipped(logp, old_logp, adv, epsilon: float):
  """Where the clipped term is the minimum of the surrogate (its gradient is then zero)."""
  ratio = jnp.exp(logp - old_logp)
  return ((adv > 0) & (ratio > 1.0 + epsilon)) | ((adv < 0) & (ratio < 1.0 - epsilon))


def objective(logp, rollouts, cfg):
  """The loss of new per-action log-probs `logp` [G, B, A] on a fixed batch of rollouts: the
  clipped surrogate against the sampling policy's log-probs + beta * k3 KL to the reference,
  aggregated by name. Returns (loss, {'kl', 'clip_frac'}), both over the actions taken."""
  old, ref, adv = (jax.lax.stop_gradient(rollouts[k]) for k in ("old_logp", "ref_logp", "adv"))
  mask = rollouts["mask"]
  active = mask > 0
  adv = adv[..., None]
  # Untaken actions replay other values (e.g. a finished episode's carried verdict); pin them
  # to the old log-prob so that exp() of their difference can neither overflow nor send a NaN
  # through the masked gradient.
  logp = jnp.where(active, logp, old)
  losses = action_losses(logp, old, ref, adv, epsilon=cfg.epsilon, beta=cfg.beta)
  losses = jnp.where(active, losses, 0.0)
  A = logp.shape[-1]
  loss = AGGREGATIONS[cfg.aggregation](losses.reshape(-1, A), mask.reshape(-1, A), A)
  n = jnp.maximum(mask.sum(), 1.0)
  stats = {"kl": jnp.sum(jnp.where(active, k3_kl(logp, ref), 0.0)) / n,
           "clip_frac": jnp.sum(active & clipped(logp, old, adv, cfg.epsilon)) / n}
  return loss, stats


def grpo_loss(agent, engine, params, ref_params, engine_params, corpus, batch, rng, spec, cfg):
  """One GRPO objective over G sampled episodes per query, at the sampling params (ratio 1).

  Its gradient is the first of `make_train_step`'s updates. Returns (loss, metrics).
  """
  rollouts, metrics = sample_rollouts(agent, engine, params, ref_params, engine_params, corpus,
                                      batch, rng, spec, cfg)
  loss, stats = objective(rollouts["old_logp"], rollouts, cfg)
  metrics.update(stats, loss=loss)
  return loss, metrics


def make_train_step(agent, engine, engine_params, ref_params, corpus, spec, cfg):
  """step(state, batch, rng) -> (state, metrics): samples a batch of rollouts with state.params,
  then applies cfg.updates_per_batch (mu) gradient updates of `objective` on it, each replaying
  the recorded episodes with the current params against the sampling policy's log-probs (from
  the second update on, the ratio leaves 1 and epsilon's clipping can engage). loss, kl,
  clip_frac and grad_norm are the last update's. state.step counts batches (the train loop
  resumes and checkpoints by it); the optimizer's own count (its warm-up) counts updates.
  """
  def loss_fn(params, batch, rollouts, rng):
    logp = replay_logp(agent, engine, params, engine_params, corpus, batch, rollouts["forced"],
                       rng, spec)
    return objective(logp, rollouts, cfg)

  def step(state, batch, rng):
    rollouts, metrics = sample_rollouts(agent, engine, state.params, ref_params, engine_params,
                                        corpus, batch, rng, spec, cfg)
    rollouts = jax.lax.stop_gradient(rollouts)

    def update(state, _):
      (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state.params, batch, rollouts, rng)
      stats.update(loss=loss, grad_norm=optax.tree.norm(grads))
      return state.apply_gradients(grads=grads), stats

    batches = state.step
    state, stats = jax.lax.scan(update, state, None, length=cfg.updates_per_batch)
    metrics.update(jax.tree.map(lambda x: x[-1], stats))
    return state.replace(step=batches + 1), metrics

  return step
