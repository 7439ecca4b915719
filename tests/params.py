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
