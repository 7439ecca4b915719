"""Tests for vsr_jax.engine.encode: best_window, frames_to_seconds, batched encoding."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vsr_jax import config_lib
from vsr_jax.engine import encode, towers
from vsr_jax.engine.towers import DualEncoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"

best_window = jax.jit(encode.best_window)


def brute_force_window(scores, n):
  """O(T^2): the inclusive window [a, b] of valid frames maximising sum(scores - mean)."""
  s = np.asarray(scores[:n], np.float64)
  c = s - s.mean()
  best, arg = -np.inf, None
  for a in range(n):
    for b in range(a, n):
      g = c[a:b + 1].sum()
      if g > best:
        best, arg = g, (a, b)
  return arg, best, c


# ----------------------------------------------------------------------------- best_window


def test_best_window_hand_examples():
  scores = jnp.array([[0, 0, 5, 5, 0, 0, 100, 100],      # padding (100s) is ignored
                      [1, 9, 1, 9, 1, 0, 0, 0],          # mean 4.2: [1, 3] gains 4.8-3.2+4.8
                      [3, 3, 3, 3, 3, 3, 3, 3],          # all equal: every gain 0 -> [0, 0]
                      [7, 0, 0, 0, 0, 0, 0, 0]], jnp.float32)
  n = jnp.array([6, 5, 8, 1], jnp.int32)
  start, end = best_window(scores, n)
  assert start.dtype == jnp.int32 and end.dtype == jnp.int32
  np.testing.assert_array_equal(start, [2, 1, 0, 0])
  np.testing.assert_array_equal(end, [3, 3, 0, 0])


def test_best_window_matches_brute_force():
  rng = np.random.default_rng(0)
  N, T = 300, 12
  scores = rng.standard_normal((N, T)).astype(np.float32)
  n = rng.integers(1, T + 1, N).astype(np.int32)
  scores[np.arange(T)[None] >= n[:, None]] = 50.0       # padding that would win if read
  start, end = (np.asarray(x) for x in best_window(jnp.asarray(scores), jnp.asarray(n)))
  for i in range(N):
    (a, b), best, c = brute_force_window(scores[i], n[i])
    assert 0 <= start[i] <= end[i] < n[i]
    got = c[start[i]:end[i] + 1].sum()
    assert got == pytest.approx(best, abs=1e-5)
    assert (start[i], end[i]) == (a, b)


def test_best_window_leading_batch_dims():
  rng = np.random.default_rng(1)
  scores = rng.standard_normal((2, 3, 10)).astype(np.float32)
  n = rng.integers(1, 11, (2, 3)).astype(np.int32)
  start, end = best_window(jnp.asarray(scores), jnp.asarray(n))
  assert start.shape == end.shape == (2, 3)
  for g in range(2):
    for b in range(3):
      (a, e), _, _ = brute_force_window(scores[g, b], n[g, b])
      assert (int(start[g, b]), int(end[g, b])) == (a, e)


# ----------------------------------------------------------------------------- frames_to_seconds


def test_frames_to_seconds():
  start = jnp.array([2, 2, 0, 3])
  end = jnp.array([3, 9, 0, 3])
  fs = jnp.array([2.0, 2.0, 0.5, 1.5])
  dur = jnp.array([100.0, 15.0, 10.0, 5.5])
  out = np.asarray(encode.frames_to_seconds(start, end, fs, dur))
  # [4, 8]; end (9+1)*2 = 20 clipped to 15; one frame [0, 0.5]; (3+1)*1.5 = 6 -> 5.5.
  np.testing.assert_allclose(out, [[4, 8], [4, 15], [0, 0.5], [4.5, 5.5]])
  assert out.shape == (4, 2)


def test_frames_to_seconds_start_clipped_to_the_video():
  out = np.asarray(encode.frames_to_seconds(jnp.array([10]), jnp.array([11]),
                                            jnp.array([2.0]), jnp.array([15.0])))
  assert (out >= 0).all() and (out <= 15.0).all(), out


# ----------------------------------------------------------------------------- batched encoding


@pytest.fixture(scope="module")
def engine_setup():
  config = config_lib.load(SMOKE)
  engine = towers.build_engine(config, 30)
  shapes = jax.eval_shape(lambda r: towers.init_engine(engine, config, r), jax.random.key(0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), jnp.float32), shapes)
  return config, engine, params


def test_encode_videos_batching_equals_unbatched(engine_setup):
  _, engine, params = engine_setup
  rng = np.random.default_rng(1)
  N = 7
  feats = rng.standard_normal((N, 32, 32)).astype(np.float32)
  num_frames = rng.integers(1, 33, N).astype(np.int32)
  whole = np.asarray(jax.jit(lambda p, f, n: engine.apply(
      {"params": p}, f, n, method=DualEncoder.encode_video))(params, feats, num_frames))
  for batch in (3, 7, 10):
    out = encode.encode_videos(engine, params, feats, num_frames, batch)
    assert isinstance(out, np.ndarray) and out.shape == (N, 32)
    np.testing.assert_allclose(out, whole, atol=1e-5)


def test_encode_queries_batching_equals_unbatched(engine_setup):
  _, engine, params = engine_setup
  rng = np.random.default_rng(2)
  N = 5
  tokens = rng.integers(2, 30, (N, 24)).astype(np.int32)
  tokens[np.arange(24)[None] >= rng.integers(1, 25, N)[:, None]] = 0
  whole = np.asarray(jax.jit(lambda p, t: engine.apply(
      {"params": p}, t, method=DualEncoder.encode_text))(params, tokens))
  for batch in (2, 5):
    out = encode.encode_queries(engine, params, tokens, batch)
    assert out.shape == (N, 32)
    np.testing.assert_allclose(out, whole, atol=1e-5)
  # Rows are not mixed up: every query's vector is its own.
  assert np.abs(whole[0] - whole[1]).max() > 1e-3
