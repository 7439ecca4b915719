"""Tests for vsr_jax.engine.towers: shapes, norms, soft tokens, padding invariance."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vsr_jax import config_lib
from vsr_jax.engine import towers
from vsr_jax.engine.towers import DualEncoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"
VOCAB = 40
B = 3


@pytest.fixture(scope="module")
def setup():
  config = config_lib.load(SMOKE)
  engine = towers.build_engine(config, VOCAB)
  # Random parameters of the right shapes (NumPy: cheaper than compiling the initialiser),
  # with LayerNorm scales near 1 and no parameter that happens to be zero.
  shapes = jax.eval_shape(lambda r: towers.init_engine(engine, config, r), jax.random.key(0))
  rng = np.random.default_rng(0)

  def init(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if path[-1].key == "scale":
      return jnp.asarray(1.0 + 0.05 * noise)
    return jnp.asarray(0.1 * noise)

  params = jax.tree_util.tree_map_with_path(init, shapes)
  text = jax.jit(lambda p, t, s: engine.apply({"params": p}, t, s,
                                              method=DualEncoder.encode_text))
  video = jax.jit(lambda p, f, n: engine.apply({"params": p}, f, n,
                                               method=DualEncoder.encode_video))
  return config, engine, params, text, video


def make_tokens(lengths, max_len=24, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, VOCAB, (len(lengths), max_len)).astype(np.int32)
  tokens[np.arange(max_len)[None] >= np.array(lengths)[:, None]] = 0
  return jnp.asarray(tokens)


def make_video(seed=0, frames=32, dim=32, num_frames=(5, 32, 1)):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal((len(num_frames), frames, dim)), jnp.float32),
          jnp.asarray(num_frames, jnp.int32))


def test_shapes_and_unit_norms(setup):
  config, engine, params, text, video = setup
  tokens = make_tokens([3, 24, 1])
  q = text(params, tokens, None)
  assert q.shape == (B, config.engine.embed_dim) and q.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, rtol=1e-5)
  feats, n = make_video()
  v = video(params, feats, n)
  assert v.shape == (B, config.engine.embed_dim)
  np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, rtol=1e-5)
  frames = jax.jit(lambda p, f: engine.apply({"params": p}, f,
                                             method=DualEncoder.frame_vectors))(params, feats)
  assert frames.shape == (B, 32, config.engine.embed_dim)
  # The video vector is the normalised mean of its valid frame vectors.
  np.testing.assert_allclose(v[0], towers.l2_normalize(frames[0, :5].mean(0)), atol=1e-5)


def test_different_queries_differ(setup):
  _, _, params, text, _ = setup
  q = np.asarray(text(params, make_tokens([4, 4, 4], seed=3), None))
  assert np.abs(q[0] - q[1]).max() > 1e-3 and np.abs(q[1] - q[2]).max() > 1e-3


def test_zero_soft_tokens_give_the_original_vector_exactly(setup):
  _, _, params, text, _ = setup
  tokens = make_tokens([3, 24, 7])
  plain = np.asarray(text(params, tokens, None))
  soft = jnp.zeros((B, 2, 32), jnp.float32)                  # 2 of num_slots = 4
  np.testing.assert_array_equal(np.asarray(text(params, tokens, soft)), plain)


def test_nonzero_soft_tokens_change_the_vector(setup):
  _, _, params, text, _ = setup
  tokens = make_tokens([3, 24, 7])
  plain = np.asarray(text(params, tokens, None))
  # Only the second soft token is set (a random vector: LayerNorm would undo a constant).
  soft = np.zeros((B, 2, 32), np.float32)
  soft[:, 1] = np.random.default_rng(5).standard_normal((B, 32))
  out = np.asarray(text(params, tokens, soft))
  assert (np.abs(out - plain).max(-1) > 1e-3).all()
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)


def test_too_many_soft_tokens(setup):
  _, engine, params, _, _ = setup
  with pytest.raises(ValueError, match="5 soft tokens.*4 slots"):
    engine.apply({"params": params}, make_tokens([3, 3, 3]), jnp.zeros((B, 5, 32)),
                 method=DualEncoder.encode_text)


def test_too_long_query(setup):
  _, engine, params, _, _ = setup
  with pytest.raises(ValueError, match="at most 24"):
    engine.apply({"params": params}, jnp.ones((1, 25), jnp.int32),
                 method=DualEncoder.encode_text)


def test_gradient_wrt_soft_tokens_at_zero(setup):
  _, engine, params, _, _ = setup
  tokens = make_tokens([3, 24, 7])
  direction = jnp.asarray(np.random.default_rng(2).standard_normal((B, 32)), jnp.float32)

  def objective(soft):
    q = engine.apply({"params": params}, tokens, soft, method=DualEncoder.encode_text)
    return jnp.sum(q * direction)

  grad = np.asarray(jax.jit(jax.grad(objective))(jnp.zeros((B, 2, 32))))
  assert grad.shape == (B, 2, 32)
  assert (np.linalg.norm(grad, axis=-1) > 1e-4).all()        # every soft token of every query


def test_padding_does_not_change_the_output(setup):
  """Tokens are left-packed: the same query given as [B, L] with no padding, or padded with
  PAD to max_len, is the same query; and the PAD embedding / the position embeddings past
  the query's length are never read."""
  _, _, params, text, _ = setup
  tokens = make_tokens([5, 5, 5], seed=4)
  full = np.asarray(text(params, tokens, None))
  short = np.asarray(text(params, tokens[:, :5], None))
  np.testing.assert_allclose(short, full, atol=2e-6)
  p = jax.tree.map(np.array, params)                       # a mutable NumPy copy
  bump = np.random.default_rng(6).standard_normal((24, 32))  # random: LayerNorm undoes constants
  p["text"]["token_embed"]["embedding"][0] += bump[0]
  p["text"]["pos_embed"][5:] += bump[5:]
  np.testing.assert_allclose(np.asarray(text(p, tokens, None)), full, atol=2e-6)
  # Control: the same change inside the query does change it.
  p["text"]["pos_embed"][4] += bump[4]
  assert np.abs(np.asarray(text(p, tokens, None)) - full).max() > 1e-3


def test_all_padding_query_is_finite(setup):
  _, _, params, text, _ = setup
  q = np.asarray(text(params, jnp.zeros((B, 24), jnp.int32), None))
  assert np.isfinite(q).all()
  np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, rtol=1e-5)


def test_video_tower_ignores_padded_frames(setup):
  _, _, params, _, video = setup
  feats, n = make_video(num_frames=(5, 31, 1))
  base = np.asarray(video(params, feats, n))
  mask = np.arange(32)[None, :, None] >= np.asarray(n)[:, None, None]
  noise = np.random.default_rng(3).standard_normal(feats.shape).astype(np.float32) * 100.0
  changed = np.where(mask, noise, np.asarray(feats))
  np.testing.assert_array_equal(np.asarray(video(params, changed, n)), base)
  # Control: changing a valid frame changes the vector.
  moved = np.array(feats)
  moved[:, 0] += np.random.default_rng(4).standard_normal(32).astype(np.float32)
  assert (np.abs(np.asarray(video(params, moved, n)) - base).max(-1) > 1e-4).all()
