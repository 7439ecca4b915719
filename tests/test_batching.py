"""Tests for vsr_jax.data.batching: fine-token dropping and the engine's batches."""
import numpy as np
import pytest

from vsr_jax.data import batching
from vsr_jax.data.store import Split
from vsr_jax.data.tokenizer import PAD


def brute_force_drop(tokens, fine, draws, keep):
  """Row by row: keep non-PAD tokens not dropped (fine and draw >= keep), else the first."""
  out = np.zeros_like(tokens)
  for i, (t, f, r) in enumerate(zip(tokens, fine, draws)):
    kept = [x for x, fi, ri in zip(t, f, r) if x != PAD and not (fi and ri >= keep)]
    if not kept and t[0] != PAD:
      kept = [t[0]]
    out[i, :len(kept)] = kept
  return out


def random_captions(rng, n=64, length=10, vocab=30):
  lengths = rng.integers(0, length + 1, n)
  tokens = np.where(np.arange(length)[None] < lengths[:, None],
                    rng.integers(2, vocab, (n, length)), PAD).astype(np.int32)
  fine = (rng.random((n, length)) < 0.5) & (tokens != PAD)
  fine[:4] = tokens[:4] != PAD          # some captions that are entirely fine
  return tokens, fine


def test_keep_zero_hand_example():
  tokens = np.array([[5, 6, 7, 8, 0, 0],
                     [9, 4, 3, 0, 0, 0],
                     [2, 3, 0, 0, 0, 0],
                     [0, 0, 0, 0, 0, 0]], np.int32)
  fine = np.array([[0, 1, 0, 1, 0, 0],
                   [1, 1, 0, 0, 0, 0],
                   [1, 1, 0, 0, 0, 0],           # all fine: the first token stays
                   [0, 0, 0, 0, 0, 0]], bool)
  out = batching.drop_fine_tokens(tokens, fine, 0.0, np.random.default_rng(0))
  np.testing.assert_array_equal(out, [[5, 7, 0, 0, 0, 0],
                                      [3, 0, 0, 0, 0, 0],
                                      [2, 0, 0, 0, 0, 0],
                                      [0, 0, 0, 0, 0, 0]])
  assert out.dtype == tokens.dtype


def test_keep_zero_removes_exactly_the_fine_tokens():
  tokens, fine = random_captions(np.random.default_rng(1))
  out = batching.drop_fine_tokens(tokens, fine, 0.0, np.random.default_rng(2))
  np.testing.assert_array_equal(out, brute_force_drop(tokens, fine, np.ones(tokens.shape), 0.0))


def test_keep_one_is_identity():
  tokens, fine = random_captions(np.random.default_rng(3))
  out = batching.drop_fine_tokens(tokens, fine, 1.0, np.random.default_rng(4))
  np.testing.assert_array_equal(out, tokens)


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9])
def test_partial_keep_matches_the_draws(keep):
  tokens, fine = random_captions(np.random.default_rng(5))
  draws = np.random.default_rng(6).random(tokens.shape)   # the same stream the function uses
  out = batching.drop_fine_tokens(tokens, fine, keep, np.random.default_rng(6))
  np.testing.assert_array_equal(out, brute_force_drop(tokens, fine, draws, keep))
  # Non-fine tokens always survive, in order.
  for t, f, o in zip(tokens, fine, out):
    coarse = [x for x, fi in zip(t, f) if x != PAD and not fi]
    kept = [x for x in o if x != PAD]
    it = iter(kept)
    assert all(any(x == y for y in it) for x in coarse)


def test_drop_rate():
  tokens = np.full((200, 20), 7, np.int32)
  fine = np.ones_like(tokens, bool)
  fine[:, 0] = False
  out = batching.drop_fine_tokens(tokens, fine, 0.3, np.random.default_rng(0))
  kept_fine = ((out != PAD).sum(1) - 1).sum() / (200 * 19)
  assert kept_fine == pytest.approx(0.3, abs=0.03)


def test_never_empties_a_caption():
  tokens, fine = random_captions(np.random.default_rng(7), n=200)
  fine = tokens != PAD                                   # everything fine
  out = batching.drop_fine_tokens(tokens, fine, 0.0, np.random.default_rng(8))
  nonempty = (tokens != PAD).any(1)
  assert ((out != PAD).sum(1)[nonempty] == 1).all()
  np.testing.assert_array_equal(out[nonempty, 0], tokens[nonempty, 0])
  assert not out[~nonempty].any()


# ----------------------------------------------------------------------------- engine_batch


def fake_split(num_queries=40, num_videos=12, frames=6, dim=3, length=8):
  """Query q's first token is q + 2 (so a batch reveals which queries it drew)."""
  rng = np.random.default_rng(11)
  tokens = np.zeros((num_queries, length), np.int32)
  tokens[:, 0] = np.arange(num_queries) + 2
  tokens[:, 1:4] = rng.integers(2, 50, (num_queries, 3))
  fine = np.zeros_like(tokens, bool)
  fine[:, 2] = True
  features = np.arange(num_videos, dtype=np.float32)[:, None, None] * np.ones((1, frames, dim),
                                                                             np.float32)
  return Split(name="train", video_ids=[f"v{i}" for i in range(num_videos)],
               features=features, num_frames=np.arange(num_videos, dtype=np.int32) % frames + 1,
               frame_seconds=np.ones(num_videos, np.float32),
               durations=np.ones(num_videos, np.float32),
               desc_ids=np.arange(num_queries), queries=[""] * num_queries, tokens=tokens,
               fine=fine, video_index=(np.arange(num_queries) * 7 % num_videos).astype(np.int32),
               times=np.zeros((num_queries, 2), np.float32), corrections={})


def test_engine_batch_shapes_and_contents():
  split = fake_split()
  pool = (np.arange(40)[:, None] + np.arange(4)[None] * 3) % 12        # [Q, 4]
  b = batching.engine_batch(split, 3, seed=0, batch_size=8, fine_keep=1.0, hard_pool=pool,
                            hard_negatives=2)
  assert b["tokens"].shape == (8, 8)
  assert b["features"].shape == (24, 6, 3)
  assert b["num_frames"].shape == b["video_ids"].shape == (24,)
  assert b["video_ids"].dtype == np.int32
  qi = b["tokens"][:, 0] - 2
  assert len(set(qi.tolist())) == 8                      # Q >= B: without replacement
  np.testing.assert_array_equal(b["tokens"], split.tokens[qi])   # fine_keep = 1: unchanged
  vi = b["video_ids"]
  np.testing.assert_array_equal(vi[:8], split.video_index[qi])
  for h in (1, 2):
    assert all(v in pool[q] for v, q in zip(vi[8 * h:8 * h + 8], qi))
  np.testing.assert_array_equal(b["features"][:, 0, 0], vi.astype(np.float32))
  np.testing.assert_array_equal(b["num_frames"], split.num_frames[vi])


def test_engine_batch_random_negatives_before_mining():
  split = fake_split()
  b = batching.engine_batch(split, 0, seed=0, batch_size=16, fine_keep=0.0, hard_pool=None,
                            hard_negatives=3)
  assert b["video_ids"].shape == (64,)
  assert ((0 <= b["video_ids"]) & (b["video_ids"] < 12)).all()
  # fine_keep = 0: the fine column (index 2) is gone, the other tokens are packed left.
  qi = b["tokens"][:, 0] - 2
  expected = np.zeros((16, 8), np.int32)
  expected[:, [0, 1, 2]] = split.tokens[qi][:, [0, 1, 3]]
  np.testing.assert_array_equal(b["tokens"], expected)


def test_engine_batch_no_hard_negatives():
  b = batching.engine_batch(fake_split(), 0, seed=0, batch_size=5, fine_keep=1.0,
                            hard_pool=None, hard_negatives=0)
  assert b["video_ids"].shape == (5,) and b["features"].shape == (5, 6, 3)


def test_engine_batch_small_split_samples_with_replacement():
  split = fake_split(num_queries=3)
  b = batching.engine_batch(split, 0, seed=0, batch_size=10, fine_keep=1.0, hard_pool=None,
                            hard_negatives=1)
  assert b["tokens"].shape == (10, 8)
  assert set((b["tokens"][:, 0] - 2).tolist()) <= {0, 1, 2}


def test_engine_batch_deterministic_per_seed_and_step():
  split = fake_split()
  pool = np.tile(np.arange(12)[None], (40, 1))
  kw = dict(batch_size=8, fine_keep=0.5, hard_pool=pool, hard_negatives=1)
  a = batching.engine_batch(split, 5, seed=1, **kw)
  b = batching.engine_batch(split, 5, seed=1, **kw)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  other_step = batching.engine_batch(split, 6, seed=1, **kw)
  other_seed = batching.engine_batch(split, 5, seed=2, **kw)
  assert not np.array_equal(a["tokens"], other_step["tokens"])
  assert not np.array_equal(a["tokens"], other_seed["tokens"])
  # Independent of what was drawn before (no hidden global state).
  np.random.seed(123)
  c = batching.engine_batch(split, 5, seed=1, **kw)
  np.testing.assert_array_equal(a["video_ids"], c["video_ids"])


@pytest.mark.parametrize("keep, width", [(1.0, 4), (0.0, 3)])
def test_engine_batch_cuts_tokens_to_the_longest_caption(keep, width):
  """token_multiple: the batch's tokens end after its longest caption, rounded up to the
  multiple (never past the split's width); the cut columns held padding only, and the rest of
  the batch is the uncut batch's."""
  split = fake_split()
  kw = dict(batch_size=8, fine_keep=keep, hard_pool=None, hard_negatives=1)
  full = batching.engine_batch(split, 2, seed=0, **kw)
  for multiple, want in ((1, width), (3, 3 * -(-width // 3)), (5, 5), (16, 8)):
    cut = batching.engine_batch(split, 2, seed=0, token_multiple=multiple, **kw)
    assert cut["tokens"].shape == (8, want)
    np.testing.assert_array_equal(cut["tokens"], full["tokens"][:, :want])
    assert (full["tokens"][:, want:] == PAD).all()
    np.testing.assert_array_equal(cut["video_ids"], full["video_ids"])


def test_engine_batch_carries_pooled_rows_instead_of_tokens():
  split = fake_split()
  pooled = np.arange(40, dtype=np.float32)[:, None] * np.ones((1, 5), np.float32)
  kw = dict(batch_size=8, fine_keep=1.0, hard_pool=None, hard_negatives=1)
  b = batching.engine_batch(split, 4, seed=0, pooled=pooled, **kw)
  want = batching.engine_batch(split, 4, seed=0, **kw)
  assert "tokens" not in b and b["pooled"].shape == (8, 5)
  np.testing.assert_array_equal(b["pooled"][:, 0], want["tokens"][:, 0] - 2)   # query ids
  np.testing.assert_array_equal(b["video_ids"], want["video_ids"])
