"""Random parameters of a model's shapes, for tests that need a trained-like (non-zero-init)
model. Not a test module."""

import jax
import jax.numpy as jnp
import numpy as np


def random_params(shapes, seed):
  """LayerNorm scales near 1, every other leaf small noise; nothing exactly 0."""
  rng = np.random.default_rng(seed)

  def init(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if path[-1].key == "scale":
      return jnp.asarray(1.0 + 0.05 * noise)
    return jnp.asarray(0.1 * noise)

  return jax.tree_util.tree_map_with_path(init, shapes)


def random_models(config, vocab: int, refine: str = "sqr"):
  """(agent, engine, agent params, engine params) of `config`, both with random_params."""
  from vsr_jax.agent import policy   # pylint: disable=g-import-not-at-top
  from vsr_jax.engine import towers   # pylint: disable=g-import-not-at-top
  agent = policy.build_agent(config, vocab, refine)
  engine = towers.build_engine(config, vocab)
  shapes = jax.eval_shape(lambda r: policy.init_agent(agent, config, r), jax.random.key(0))
  eshapes = jax.eval_shape(lambda r: towers.init_engine(engine, config, r), jax.random.key(0))
  return agent, engine, random_params(shapes, 1), random_params(eshapes, 2)
