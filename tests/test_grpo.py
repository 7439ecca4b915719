"""Tests for vsr_jax.objectives.grpo: advantages, KL, surrogate, aggregations against NumPy;
episode_actions; grpo_loss and the train step (mu updates per batch of rollouts) end to end on
the smoke config."""
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from params import random_models, random_params

from vsr_jax import config_lib, rollout
from vsr_jax.agent.policy import MATCHED
from vsr_jax.data.tokenizer import PAD
from vsr_jax.engine import index as index_lib
from vsr_jax.engine.towers import DualEncoder
from vsr_jax.objectives import grpo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"
VOCAB = 40


# ------------------------------------------------------------------ NumPy references


def np_grpo_adv(r):
  return (r - r.mean(0)) / (r.std(0, ddof=1) + 1e-4)


def np_dr_grpo_adv(r):
  return r - r.mean(0)


def np_rloo_adv(r):
  G = r.shape[0]
  out = np.empty_like(r)
  for i in range(G):
    out[i] = r[i] - np.delete(r, i, axis=0).mean(0)
  return out


def np_k3(logp, ref):
  return np.exp(ref - logp) - (ref - logp) - 1.0


def np_surrogate(logp, old, adv, eps):
  ratio = np.exp(logp - old)
  return -np.minimum(ratio * adv, np.clip(ratio, 1 - eps, 1 + eps) * adv)


def np_aggregate(name, losses, mask, max_actions):
  rows = []
  for l, m in zip(losses, mask):
    if name == "grpo":
      rows.append((l * m).sum() / max(m.sum(), 1.0))
    elif name == "dr_grpo":
      rows.append((l * m).sum() / max_actions)
  if name == "token_mean":
    return (losses * mask).sum() / max(mask.sum(), 1.0)
  return np.mean(rows)


@pytest.fixture(scope="module")
def rand():
  return np.random.default_rng(0)


@pytest.mark.parametrize("name,ref", [("grpo", np_grpo_adv), ("dr_grpo", np_dr_grpo_adv),
                                      ("rloo", np_rloo_adv)])
def test_advantages(rand, name, ref):
  r = rand.standard_normal((5, 7)).astype(np.float32)
  got = np.asarray(jax.jit(grpo.ADVANTAGES[name])(r))
  np.testing.assert_allclose(got, ref(r.astype(np.float64)), rtol=1e-4, atol=1e-5)
  # Group-relative: per query (column), the advantages sum to zero.
  np.testing.assert_allclose(got.sum(0), 0.0, atol=1e-4)


def test_grpo_advantage_eps_and_equal_rewards():
  r = np.array([[1.0, 3.0], [1.0, 5.0]], np.float32)       # G = 2, B = 2
  adv = np.asarray(grpo.grpo_advantage(r))
  np.testing.assert_array_equal(adv[:, 0], 0.0)            # a tied group: no signal
  # Unbiased std of (3, 5) is sqrt(2); the eps is added to the std, not to the variance.
  np.testing.assert_allclose(adv[:, 1], [-1 / (np.sqrt(2) + 1e-4), 1 / (np.sqrt(2) + 1e-4)],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grpo.rloo_advantage(r))[:, 1], [-2.0, 2.0])


def test_k3_kl(rand):
  logp = rand.normal(-1.0, 1.0, 50).astype(np.float32)
  ref = rand.normal(-1.0, 1.0, 50).astype(np.float32)
  got = np.asarray(grpo.k3_kl(logp, ref))
  np.testing.assert_allclose(got, np_k3(logp.astype(np.float64), ref), rtol=1e-4, atol=1e-5)
  assert (got >= -1e-6).all()
  np.testing.assert_array_equal(np.asarray(grpo.k3_kl(logp, logp)), 0.0)


def test_clipped_surrogate_and_action_losses(rand):
  n = 200
  old = rand.normal(-2.0, 1.0, n).astype(np.float32)
  logp = (old + rand.normal(0.0, 0.5, n)).astype(np.float32)   # ratios well outside 1 +- eps
  ref = (old + rand.normal(0.0, 0.3, n)).astype(np.float32)
  adv = rand.standard_normal(n).astype(np.float32)
  ratio = np.exp(logp - old)
  assert ((ratio > 1.2) & (adv > 0)).any() and ((ratio < 0.8) & (adv < 0)).any()
  got = np.asarray(grpo.clipped_surrogate(logp, old, adv, 0.2))
  expect = np_surrogate(logp.astype(np.float64), old, adv, 0.2)
  np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5)
  # Pessimistic: never below the unclipped objective's loss.
  assert (got >= -ratio * adv - 1e-5).all()
  losses = np.asarray(grpo.action_losses(logp, old, ref, adv, epsilon=0.2, beta=0.05))
  np.testing.assert_allclose(losses, expect + 0.05 * np_k3(logp.astype(np.float64), ref),
                             rtol=1e-4, atol=1e-5)
  # Broadcasting as grpo_loss uses it: adv [G, B, 1] against [G, B, A].
  lp = logp[:24].reshape(2, 3, 4)
  a = adv[:6].reshape(2, 3, 1)
  out = np.asarray(grpo.action_losses(lp, lp, lp, a, epsilon=0.2, beta=0.01))
  np.testing.assert_allclose(out, np.broadcast_to(-a, (2, 3, 4)), rtol=1e-6)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "token_mean"])
def test_aggregations(rand, name):
  R, A = 6, 9
  losses = rand.standard_normal((R, A)).astype(np.float32)
  mask = (rand.random((R, A)) < 0.5).astype(np.float32)
  mask[2] = 0.0                     # a rollout without actions
  mask[3] = 1.0
  got = float(jax.jit(grpo.AGGREGATIONS[name], static_argnums=2)(losses, mask, A))
  np.testing.assert_allclose(got, np_aggregate(name, losses.astype(np.float64), mask, A),
                             rtol=1e-5, atol=1e-6)
  # Masked entries do not count, whatever their value.
  noisy = np.where(mask > 0, losses, 1e6).astype(np.float32)
  np.testing.assert_allclose(float(grpo.AGGREGATIONS[name](noisy, mask, A)), got, rtol=1e-5)


def test_aggregations_differ():
  """The three aggregations weigh rollouts of different lengths differently."""
  losses = np.array([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]], np.float32)
  mask = np.array([[1, 1, 1, 1], [1, 0, 0, 0]], np.float32)
  assert float(grpo.grpo_aggregate(losses, mask, 4)) == pytest.approx(2.5)     # (1 + 4) / 2
  assert float(grpo.dr_grpo_aggregate(losses, mask, 4)) == pytest.approx(1.0)  # (4 + 4)/4/2
  assert float(grpo.token_mean_aggregate(losses, mask, 4)) == pytest.approx(1.6)  # 8 / 5


# ------------------------------------------------------------------ episode_actions


def test_episode_actions_flattening_and_masks():
  T, B, N = 2, 2, 3
  v = np.arange(T * B, dtype=np.float32).reshape(T, B)              # v[t, b] = 2t + b
  steps = {
      "verdict_logp": -1.0 - v, "span_logp": -10.0 - v,
      "refine_logp": -100.0 - (10 * v[..., None] + np.arange(N)),   # [T, B, N]
      "active": np.array([[True, True], [False, True]]),
      "grounds": np.array([[True, False], [False, True]]),
      "refines": np.array([[False, True], [False, False]]),
  }
  ref = {k: (x + 0.5 if k.endswith("logp") else x) for k, x in steps.items()}
  logp, ref_logp, mask = (np.asarray(x) for x in grpo.episode_actions(steps, ref))
  A = T + T + T * N
  assert logp.shape == ref_logp.shape == mask.shape == (B, A)
  assert mask.dtype == np.float32
  # Layout: verdicts (per turn), spans (per turn), then refinement latents turn-major.
  for b in range(B):
    expect = ([-1.0 - (2 * t + b) for t in range(T)] + [-10.0 - (2 * t + b) for t in range(T)]
              + [-100.0 - (10 * (2 * t + b) + n) for t in range(T) for n in range(N)])
    np.testing.assert_array_equal(logp[b], expect)
  np.testing.assert_array_equal(ref_logp, logp + 0.5)
  np.testing.assert_array_equal(mask[0], [1, 0, 1, 0] + [0] * 6)
  np.testing.assert_array_equal(mask[1], [1, 1, 0, 1] + [1, 1, 1] + [0, 0, 0])


# ------------------------------------------------------------------ grpo_loss end to end




def grpo_cfg(**overrides):
  overrides = {"grpo.beta": 0.0} | {f"grpo.{k}": v for k, v in overrides.items()}
  return config_lib.load(SMOKE, {k: str(v) for k, v in overrides.items()}).grpo


@pytest.fixture(scope="module")
def world():
  config = config_lib.load(SMOKE, {"grpo.beta": "0.0"})
  agent, engine, params, engine_params = random_models(config, VOCAB)
  rng = np.random.default_rng(0)
  V, F, B, L = 12, 8, 4, 8
  E = config.engine.embed_dim
  vectors = rng.standard_normal((V, E)).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  nf = rng.integers(2, F + 1, V).astype(np.int32)
  corpus = rollout.Corpus(index_lib.ExactIndex.build(vectors),
                          jnp.asarray(rng.standard_normal((V, F, config.data.feature_dim)),
                                      jnp.float32),
                          jnp.asarray(nf), jnp.ones(V, jnp.float32),
                          jnp.asarray(nf, jnp.float32))
  tokens = rng.integers(2, VOCAB, (B, L)).astype(np.int32)
  tokens[:, 5:] = PAD
  # Ground truths that are never the original query's top-1 (see the equal-reward test).
  q0 = np.asarray(jax.jit(lambda t: engine.apply({"params": engine_params}, t,
                                                 method=DualEncoder.encode_text))(tokens))
  order = np.argsort(-(q0 @ vectors.T), axis=1)
  gt = order[:, 2].astype(np.int32)
  keys = vectors[np.stack([gt] + [order[:, i] for i in (0, 1, 3)], 1)]    # positive first
  batch = {"tokens": jnp.asarray(tokens), "gt": jnp.asarray(gt),
           "gt_time": jnp.asarray(np.tile([[1.0, 4.0]], (B, 1)), jnp.float32),
           "ret_keys": jnp.asarray(keys)}
  # Two turns (the first can refine), one latent: compiling the gradient of G sampled and
  # G replayed episodes is this file's cost, and it grows with both.
  assert config.grpo.turns == 2
  spec = rollout.EpisodeConfig(turns=2, num_latents=1, refine="sqr", sigma=config.agent.sigma,
                               mode="sample")
  return types.SimpleNamespace(agent=agent, engine=engine, params=params,
                               engine_params=engine_params, corpus=corpus, batch=batch,
                               spec=spec, cfg=config.grpo)


@pytest.fixture(scope="module")
def loss_setup(world):
  w = world

  @jax.jit
  def loss_and_grad(p, ref, rng):
    def f(pp):
      return grpo.grpo_loss(w.agent, w.engine, pp, ref, w.engine_params, w.corpus, w.batch,
                            rng, w.spec, w.cfg)
    return jax.value_and_grad(f, has_aux=True)(p)

  return w.params, loss_and_grad, w.cfg


def test_grpo_loss_gradient_finite_and_nonzero(loss_setup):
  params, loss_and_grad, cfg = loss_setup
  assert cfg.beta == 0.0 and cfg.group_size >= 2
  (loss, metrics), grads = loss_and_grad(params, params, jax.random.key(1))
  assert np.isfinite(float(loss))
  for k, v in metrics.items():
    assert np.isfinite(np.asarray(v)).all(), k
  flat = jax.tree.leaves(grads)
  assert all(np.isfinite(np.asarray(g)).all() for g in flat)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in flat) > 0
  # Every kind of action gets a gradient: the verdict, the span, and the refinement latents
  # (through their Gaussian log-prob; a sampled latent must not carry gradient itself).
  for name in ("verify_head", "start_head", "end_head", "refine_out"):
    assert np.abs(np.asarray(grads[name]["kernel"])).max() > 0, name
  assert float(metrics["kl"]) == 0.0                    # the reference is the policy itself
  assert float(metrics["reward_std"]) > 0
  # Against another reference policy the KL is positive (and the loss, at beta 0, the same).
  other = random_params(jax.eval_shape(lambda p: p, params), 5)
  (loss2, metrics2), _ = loss_and_grad(params, other, jax.random.key(1))
  assert float(metrics2["kl"]) > 1e-4
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-5, atol=1e-7)


def matched_params(params):
  p = jax.tree.map(np.array, params)
  p["verify_head"]["bias"] = np.where(np.arange(2) == MATCHED, 50.0, 0.0).astype(np.float32)
  return jax.tree.map(jnp.asarray, p)


def test_equal_rewards_in_every_group_give_zero_loss_and_gradient(loss_setup):
  """Every episode says `matched` at turn 1 on the original query's top-1, which is never
  the ground truth: answer -1, IoU 0, the same final query: each group's rewards tie."""
  params, loss_and_grad, _ = loss_setup
  (loss, metrics), grads = loss_and_grad(matched_params(params), params, jax.random.key(2))
  assert float(metrics["matched"]) == 1.0 and float(metrics["turns"]) == 1.0
  assert float(metrics["reward_answer"]) == -1.0
  assert abs(float(loss)) < 1e-7
  for g in jax.tree.leaves(grads):
    assert np.abs(np.asarray(g)).max() < 1e-7


def test_reward_std_metric_is_the_within_group_std(loss_setup):
  params, loss_and_grad, _ = loss_setup
  (_, metrics), _ = loss_and_grad(matched_params(params), params, jax.random.key(2))
  # Every group's rewards tie (previous test), but the queries' rewards differ.
  assert float(metrics["reward_std"]) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------ mu updates per batch


@pytest.fixture(scope="module")
def rollout_fns(world):
  """Jitted sampling (a batch of rollouts) and forced replay (new log-probs) of `world`."""
  w = world
  sample = jax.jit(lambda p, rng: grpo.sample_rollouts(
      w.agent, w.engine, p, w.params, w.engine_params, w.corpus, w.batch, rng, w.spec, w.cfg))
  replay = jax.jit(lambda p, forced, rng: grpo.replay_logp(
      w.agent, w.engine, p, w.engine_params, w.corpus, w.batch, forced, rng, w.spec))
  return sample, replay


def test_replay_at_the_sampling_params_gives_the_old_log_probs(world, rollout_fns):
  sample, replay = rollout_fns
  rng = jax.random.key(3)
  rollouts, _ = sample(world.params, rng)
  new = np.asarray(replay(world.params, rollouts["forced"], rng))
  old, mask = np.asarray(rollouts["old_logp"]), np.asarray(rollouts["mask"]) > 0
  G, B, A = old.shape
  assert new.shape == old.shape and G == world.cfg.group_size
  # Every kind of action was taken (layout: T verdicts, T spans, T * N latents).
  T = world.spec.turns
  assert mask[..., :T].any() and mask[..., T:2 * T].any() and mask[..., 2 * T:].any()
  np.testing.assert_allclose(new[mask], old[mask], rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.exp(new - old)[mask], 1.0, rtol=0, atol=1e-6)
  _, stats = grpo.objective(new, rollouts, world.cfg)
  assert float(stats["clip_frac"]) == 0.0
  assert float(stats["kl"]) < 1e-6                 # the reference is the sampling policy


def test_later_updates_clip_against_the_sampling_policy(world, rollout_fns, loss_setup):
  """mu = 3 at a large learning rate: the first update is at the sampling params (ratio 1:
  grpo_loss's gradient, as a mu = 1 step is; the step is one scan of mu updates), from the
  second update on the ratio leaves 1, clipping engages, and a clipped action's surrogate has
  no gradient (NumPy reference: np_surrogate).
  (SGD, whose update is linear in the gradient, so the step and the hand-written updates agree
  closely; at 0.05 the ratios move to about 0.7 .. 1.4, while far larger steps send the
  sigma-0.05 latents' ratios to 0.)"""
  w = world
  cfg = grpo_cfg(updates_per_batch=3)
  eps = cfg.epsilon
  state = train_state.TrainState.create(apply_fn=w.agent.apply, params=w.params,
                                        tx=optax.sgd(0.05))
  rng = jax.random.key(4)
  step = jax.jit(grpo.make_train_step(w.agent, w.engine, w.engine_params, w.params, w.corpus,
                                      w.spec, cfg))
  final, metrics = step(state, w.batch, rng)

  # The same three updates by hand, on one batch of rollouts sampled at the initial params.
  sample, replay = rollout_fns
  rollouts, _ = sample(w.params, rng)
  forced = rollouts["forced"]

  @jax.jit
  def update(state):
    def f(p):
      return grpo.objective(replay(p, forced, rng), rollouts, cfg)
    (loss, stats), grads = jax.value_and_grad(f, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), stats

  dloss_dlogp = jax.jit(jax.grad(lambda lp: grpo.objective(lp, rollouts, cfg)[0]))
  old = np.asarray(rollouts["old_logp"], np.float64)
  adv = np.broadcast_to(np.asarray(rollouts["adv"], np.float64)[..., None], old.shape)
  mask = np.asarray(rollouts["mask"]) > 0
  clip_fracs = []
  _, loss_and_grad, _ = loss_setup
  (_, at_sampling), grads = loss_and_grad(w.params, w.params, rng)
  for i in range(cfg.updates_per_batch):
    logp = replay(state.params, forced, rng)
    g = np.asarray(dloss_dlogp(logp))
    lp = np.asarray(logp, np.float64)
    h = 1e-7
    fd = (np_surrogate(lp + h, old, adv, eps) - np_surrogate(lp - h, old, adv, eps)) / (2 * h)
    np_clipped = mask & (adv != 0) & (fd == 0.0)
    assert (mask & (adv != 0) & ~np_clipped).any()      # not everything is clipped
    np.testing.assert_array_equal(g[np_clipped], 0.0)
    assert (g[mask & (adv != 0) & ~np_clipped] != 0).all()
    assert (g[~mask] == 0).all()
    state, stats = update(state)
    if i == 0:       # one SGD step on grpo_loss's gradient, with its metrics
      for got, p, g in zip(jax.tree.leaves(state.params), jax.tree.leaves(w.params),
                           jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(p - 0.05 * g), rtol=1e-5,
                                   atol=1e-7)
      for k in ("clip_frac", "kl"):
        if k in at_sampling and k in stats:
          np.testing.assert_allclose(float(stats[k]), float(at_sampling[k]), rtol=1e-5,
                                     atol=1e-7, err_msg=k)
    np.testing.assert_allclose(float(stats["clip_frac"]), np_clipped.sum() / mask.sum(),
                               rtol=1e-6)
    clip_fracs.append(float(stats["clip_frac"]))
  assert clip_fracs[0] == 0.0 and clip_fracs[-1] > 0.0
  for k, v in metrics.items():
    assert np.isfinite(float(v)), k
  np.testing.assert_allclose(float(metrics["clip_frac"]), clip_fracs[-1], rtol=1e-6)
  assert int(final.step) == 1                   # one batch (the train loop's step count)
  assert int(state.step) == cfg.updates_per_batch     # the three updates by hand
  for got, want in zip(jax.tree.leaves(final.params), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
