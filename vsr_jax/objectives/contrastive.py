"""InfoNCE: stage 0 (engine pretraining) and the retrieval loss of later stages."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def info_nce(q: jax.Array, keys: jax.Array, positive: jax.Array, temperature: float,
             allowed: jax.Array | None = None) -> jax.Array:
  """Per-row InfoNCE of q [B, E] against keys [N, E] (or [B, N, E] per-row keys).

  positive [B]: index of each row's positive key. allowed [B, N]: False removes a key from the
  row's softmax (false negatives, ambiguous near-ties); the positive is always kept.
  """
  if keys.ndim == 2:
    logits = q @ keys.T / temperature
  else:
    logits = jnp.einsum("be,bne->bn", q, keys) / temperature
  is_pos = jnp.arange(logits.shape[1])[None, :] == positive[:, None]
  if allowed is not None:
    logits = jnp.where(allowed | is_pos, logits, -jnp.inf)
  pos_logit = jnp.sum(jnp.where(is_pos, logits, 0.0), axis=1)
  return jax.nn.logsumexp(logits, axis=1) - pos_logit


def engine_loss(q: jax.Array, v: jax.Array, video_ids: jax.Array, temperature: float):
  """Symmetric InfoNCE of B captions against B positive + extra (hard negative) videos.

  q [B, E]; v [B + H, E], v[i] the positive of q[i] for i < B; video_ids [B + H] corpus ids,
  so that another copy of a caption's own video is never its negative.
  """
  B = q.shape[0]
  positive = jnp.arange(B)
  same = video_ids[None, :] == video_ids[:B, None]            # [B, B + H]
  t2v = info_nce(q, v, positive, temperature, allowed=~same)
  v2t = info_nce(v[:B], q, positive, temperature, allowed=~same[:, :B])
  loss = 0.5 * (t2v.mean() + v2t.mean())
  top1 = jnp.argmax(jnp.where(~same | (jnp.arange(v.shape[0])[None] == positive[:, None]),
                              q @ v.T, -jnp.inf), axis=1)
  return loss, {"loss": loss, "batch_r1": jnp.mean(top1 == positive)}
