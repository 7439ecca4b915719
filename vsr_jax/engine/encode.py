"""Batched encoding with the frozen engine (corpus vectors, query vectors), and the engine's
own grounding: the best-scoring window of frames."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vsr_jax import hosts
from vsr_jax.engine.towers import DualEncoder
from vsr_jax.progress import Progress


def batched(fn, arrays, batch: int, name: str = "", every_seconds: float = 1e9):
  """Applies a jitted fn to fixed-size batches (the last one padded: one compilation)."""
  n = len(arrays[0])
  outs = []
  progress = Progress(name, n, "items", every_seconds) if name else None
  for start in range(0, n, batch):
    part = [a[start:start + batch] for a in arrays]
    real = len(part[0])
    if real < batch:
      part = [np.concatenate([p, np.repeat(p[-1:], batch - real, 0)]) for p in part]
    outs.append(hosts.fetch(fn(*part))[:real])
    if progress:
      progress.update(start + real)
  return np.concatenate(outs) if outs else None


@functools.partial(jax.jit, static_argnums=0)
def _video_vectors(engine, params, feats, num_frames):
  return engine.apply({"params": params}, feats, num_frames, method=DualEncoder.encode_video)


@functools.partial(jax.jit, static_argnums=0)
def _query_vectors(engine, params, tokens):
  return engine.apply({"params": params}, tokens, method=DualEncoder.encode_text)


def encode_videos(engine, params, features, num_frames, batch: int, *, name: str = "",
                  every_seconds: float = 10.0) -> np.ndarray:
  fn = lambda f, n: _video_vectors(engine, params, f, n)
  return batched(fn, [features, num_frames], batch, name, every_seconds)


def encode_queries(engine, params, tokens, batch: int, *, name: str = "",
                   every_seconds: float = 10.0) -> np.ndarray:
  return batched(lambda t: _query_vectors(engine, params, t), [tokens], batch, name,
                 every_seconds)


def best_window(scores: jax.Array, num_frames: jax.Array):
  """Frames [a, b] maximising sum(scores[a..b] - mean(scores)) over valid frames.

  scores [..., T], num_frames [...]. Returns inclusive (start, end) frame indices. Maximum
  subarray via prefix sums: best end b with the smallest prefix before it.
  """
  T = scores.shape[-1]
  valid = jnp.arange(T) < num_frames[..., None]
  mean = jnp.sum(jnp.where(valid, scores, 0.0), -1, keepdims=True) / jnp.maximum(
      num_frames[..., None], 1)
  centred = jnp.where(valid, scores - mean, 0.0)
  prefix = jnp.concatenate([jnp.zeros_like(centred[..., :1]), jnp.cumsum(centred, -1)], -1)
  # Running minimum of prefix[0..b] and where it was reached (the window's start).
  idx = jnp.broadcast_to(jnp.arange(T + 1), prefix.shape)

  def take_min(a, b):
    (va, ia), (vb, ib) = a, b
    pick_b = vb < va
    return jnp.where(pick_b, vb, va), jnp.where(pick_b, ib, ia)

  run_min, run_arg = jax.lax.associative_scan(take_min, (prefix, idx), axis=-1)
  gain = prefix[..., 1:] - run_min[..., :-1]                     # window ending at b
  gain = jnp.where(valid, gain, -jnp.inf)
  end = jnp.argmax(gain, -1)
  start = jnp.take_along_axis(run_arg[..., :-1], end[..., None], -1)[..., 0]
  return start.astype(jnp.int32), end.astype(jnp.int32)


def frames_to_seconds(start, end, frame_seconds, duration):
  """Inclusive frame range -> (start, end) seconds, clipped to the video."""
  s = jnp.minimum(start * frame_seconds, duration)
  e = jnp.minimum((end + 1) * frame_seconds, duration)
  return jnp.stack([s, jnp.maximum(e, s)], -1)
