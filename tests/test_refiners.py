"""Tests for vsr_jax.agent.refiners: what SQR and HQR hand the engine, and their log-probs."""
import os

import jax
import jax.numpy as jnp
import numpy as np
from params import random_params

from vsr_jax import config_lib, registry
from vsr_jax.agent import policy, refiners
from vsr_jax.engine import towers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"
VOCAB = 40


def setup(refine):
  config = config_lib.load(SMOKE)
  engine = towers.build_engine(config, VOCAB)
  engine_params = towers.init_engine(engine, config, jax.random.PRNGKey(0))
  agent = policy.build_agent(config, VOCAB, refine)
  params = random_params(jax.eval_shape(lambda r: policy.init_agent(agent, config, r),
                                        jax.random.PRNGKey(1)), 2)
  return config, engine, engine_params, agent, params


def test_sqr_hands_the_engine_the_append_projection_and_a_gaussian_logp():
  config, engine, engine_params, agent, params = setup("sqr")
  rng = np.random.default_rng(0)
  N, D = config.agent.num_latents, config.engine.text.width
  mean = jnp.asarray(rng.normal(size=(3, N, D)), jnp.float32)
  action = mean + 0.1
  out = {"mean": mean, "action": action}
  sqr = registry.REFINERS.get("sqr")
  soft, logp, taken = sqr.episode(agent, engine, params, engine_params, out, 0.05)
  expect = agent.apply({"params": params}, action, method=policy.Agent.soft_tokens)
  np.testing.assert_allclose(soft, expect, rtol=1e-6)
  np.testing.assert_allclose(logp, np.full((3, N), -0.01 / (2 * 0.05 ** 2)), rtol=1e-5)
  assert taken is action
  np.testing.assert_allclose(sqr.train_tokens(agent, engine, params, engine_params, out), expect,
                             rtol=1e-6)


def test_hqr_hands_the_engine_its_words_with_a_straight_through_gradient():
  config, engine, engine_params, agent, params = setup("hqr")
  rng = np.random.default_rng(1)
  N = config.agent.num_latents
  logits = jnp.asarray(rng.normal(size=(2, N, VOCAB)), jnp.float32)
  words = jnp.argmax(logits, -1)
  hqr = refiners.HardQueryRefinement()
  soft, logp, taken = hqr.episode(agent, engine, params, engine_params,
                                  {"logits": logits, "words": words}, 1.0)
  table = engine.apply({"params": engine_params}, words, method=towers.DualEncoder.word_vectors)
  np.testing.assert_allclose(soft, table, rtol=1e-6)
  np.testing.assert_allclose(logp, jnp.max(jax.nn.log_softmax(logits), -1), rtol=1e-6)
  # Training: the same vectors forward, a non-zero gradient into the logits.
  st = hqr.train_tokens(agent, engine, params, engine_params, {"logits": logits, "words": words})
  np.testing.assert_allclose(st, table, rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda lg: hqr.train_tokens(agent, engine, params, engine_params,
                                              {"logits": lg, "words": words}).sum())(logits)
  assert float(jnp.abs(grad).max()) > 0
