"""Host-side batch sampling (NumPy), deterministic per (seed, step) so that runs resume exactly."""

from __future__ import annotations

import numpy as np

from vsr_jax.data.tokenizer import PAD


def drop_fine_tokens(tokens: np.ndarray, fine: np.ndarray, keep: float,
                     rng: np.random.Generator) -> np.ndarray:
  """Removes each fine-grained token with probability 1 - keep; the rest are packed left.

  The engine is trained on such captions: `keep` sets how much fine-grained reading it learns.
  A caption keeps at least its first token.
  """
  drop = fine & (rng.random(tokens.shape) >= keep)
  kept = (tokens != PAD) & ~drop
  empty = ~kept.any(1)
  kept[empty, 0] = tokens[empty, 0] != PAD
  order = np.argsort(~kept, axis=1, kind="stable")          # kept tokens first, in order
  return np.where(np.take_along_axis(kept, order, 1), np.take_along_axis(tokens, order, 1), PAD)


def engine_batch(split, step: int, *, seed: int, batch_size: int, fine_keep: float,
                 hard_pool: np.ndarray | None, hard_negatives: int,
                 pooled: np.ndarray | None = None, token_multiple: int = 0) -> dict:
  """Captions with their positive videos, then `hard_negatives` mined videos per caption.

  pooled: [Q, hidden] a frozen text tower's encodings of the split's captions; the batch then
  carries the captions' rows of it ('pooled') instead of their tokens. [K, Q, hidden]: K drawn
  variants of each caption (query_cache.caption_variants); each row takes one at random.
  token_multiple > 0: the tokens are cut to the batch's longest caption, rounded up to this
  multiple (a pretrained encoder's cost is its width, and captions with dropped fine tokens are
  short; a few widths, a few compiles)."""
  rng = np.random.default_rng([seed, 17, step])
  qi = rng.choice(split.num_queries, size=batch_size, replace=split.num_queries < batch_size)
  tokens = drop_fine_tokens(split.tokens[qi], split.fine[qi], fine_keep, rng)
  if token_multiple:
    width = -(-int((tokens != PAD).sum(1).max()) // token_multiple) * token_multiple
    tokens = tokens[:, :width]      # a caption keeps at least one token: width >= multiple
  videos = [split.video_index[qi]]
  for _ in range(hard_negatives):
    if hard_pool is None:     # before the first mining: random videos
      videos.append(rng.integers(0, split.num_videos, size=batch_size))
    else:
      pick = rng.integers(0, hard_pool.shape[1], size=batch_size)
      videos.append(hard_pool[qi, pick])
  vi = np.concatenate(videos).astype(np.int32)
  if pooled is None:
    text = {"tokens": tokens}
  elif pooled.ndim == 3:
    text = {"pooled": pooled[rng.integers(0, pooled.shape[0], size=batch_size), qi]}
  else:
    text = {"pooled": pooled[qi]}
  return {**text, "features": split.features[vi], "num_frames": split.num_frames[vi],
          "video_ids": vi}
