"""Tests for vsr_jax.objectives.sft: hard negatives, span frames, the two-rate optimizer,
sft_loss (SQR and HQR), and the training step leaving the frozen engine alone."""
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from params import random_params
from flax import traverse_util

from vsr_jax import config_lib, registry, stages
from vsr_jax.agent import policy
from vsr_jax.data.tokenizer import PAD
from vsr_jax.engine import towers
from vsr_jax.objectives import sft
from vsr_jax.stages import sft as sft_stage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"
VOCAB = 40




# ------------------------------------------------------------------ host-side data


def test_hard_negative_pool():
  ids = np.array([[4, 7, 1, 9, 2, 5],
                  [3, 0, 8, 6, 1, 2],
                  [6, 5, 4, 3, 2, 1]])
  scores = np.array([[0.9, 0.8, 0.7999, 0.6, 0.5, 0.4],
                     [0.9, 0.9002, 0.8999, 0.9001, 0.5, 0.4],
                     [0.75, 0.5, 0.4, 0.3, 0.2, 0.1]])
  gt = np.array([7, 3, 0])                  # query 2: the ground truth is not in the list
  gt_score = np.array([0.8, 0.9, 0.5])
  neg, valid = sft.hard_negative_pool(scores, ids, gt, gt_score, 3, 5e-4)
  # 0: the GT (7) and its near-tie (1, 1e-4 away) are skipped; the first three others kept.
  np.testing.assert_array_equal(neg[0], [4, 9, 2])
  np.testing.assert_array_equal(valid[0], [True, True, True])
  # 1: GT first; 0, 8, 6 are within 5e-4 of it: only two negatives, the third slot invalid.
  np.testing.assert_array_equal(neg[1][valid[1]], [1, 2])
  np.testing.assert_array_equal(valid[1], [True, True, False])
  # 2: 5 has exactly the GT's score (a tie, excluded); the others in order.
  np.testing.assert_array_equal(neg[2], [6, 4, 3])
  assert valid[2].all()
  for q in range(3):
    assert gt[q] not in neg[q][valid[q]]
  # The boundary: a score exactly `ambiguity` away is not ambiguous (binary-exact values).
  neg, valid = sft.hard_negative_pool(np.array([[0.75, 0.5, 0.625]]), np.array([[1, 2, 3]]),
                                      np.array([2]), np.array([0.5]), 2, 0.25)
  np.testing.assert_array_equal(neg[0][valid[0]], [1])
  np.testing.assert_array_equal(valid[0], [True, False])


def test_span_frames():
  times = np.array([[1.2, 3.5], [0.0, 0.4], [2.0, 2.0], [5.0, 30.0], [40.0, 50.0],
                    [2.6, 2.9]], np.float32)
  fs = np.array([0.5, 1.0, 0.5, 2.0, 2.0, 1.0], np.float32)
  nf = np.array([10, 5, 10, 8, 8, 10], np.int32)
  out = sft.span_frames(times, fs, nf)
  np.testing.assert_array_equal(out, [[2, 6],      # frames [1.0, 3.5): floor 2.4, ceil 7 - 1
                                      [0, 0],
                                      [4, 4],      # an instant: end never before start
                                      [2, 7],      # end clipped to the last frame
                                      [7, 7],      # past the video: its last frame
                                      [2, 2]])     # inside one frame
  assert out.dtype == np.int32 and out.shape == (6, 2)
  # The frames cover the moment (where it lies inside the video).
  for (s, e), (a, b), f, n in zip(out, times, fs, nf):
    if b <= n * f:
      assert s * f <= a + 1e-6 and (e + 1) * f >= b - 1e-6


# ------------------------------------------------------------------ optimizer


def test_optimizer_uses_the_projector_rate_for_projectors_only():
  config = config_lib.load(SMOKE, {"sft.warmup_steps": "1", "sft.weight_decay": "0.0",
                                   "sft.learning_rate": "1e-3",
                                   "sft.projector_learning_rate": "4e-3",
                                   "agent.refine_words": "True"})
  agent = policy.build_agent(config, VOCAB, "sqr")
  shapes = jax.eval_shape(lambda r: policy.init_agent(agent, config, r), jax.random.key(0))
  params = random_params(shapes, 0)
  assert set(sft.PROJECTORS) <= set(params)          # every name is a real module
  tx = sft.optimizer(config.sft)
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 1e-4, p.dtype), params)

  @jax.jit
  def two_updates(params):
    state = tx.init(params)
    _, state = tx.update(grads, state, params)     # warm-up step: learning rate 0
    return tx.update(grads, state, params)[0]

  updates = traverse_util.flatten_dict(jax.device_get(two_updates(params)))
  lr, plr = config.sft.learning_rate, config.sft.projector_learning_rate
  n_proj = 0
  for key, u in updates.items():
    expect = -plr if key[0] in sft.PROJECTORS else -lr
    n_proj += key[0] in sft.PROJECTORS
    np.testing.assert_allclose(u, expect, rtol=1e-3, err_msg=str(key))
  assert n_proj == 16               # kernel + bias / scale + bias of the eight projectors


def test_retrieval_loss_counts_each_corpus_video_once_and_skips_near_ties():
  rng = np.random.default_rng(4)
  V, E = 7, 5
  corpus = rng.standard_normal((V, E)).astype(np.float32)
  corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
  q = rng.standard_normal((2, E)).astype(np.float32)
  gt = np.array([2, 5])
  ids = np.array([[2, 0, 4], [5, 1, 6]])            # positive first, then hard negatives
  valid = np.array([[True, True, True], [True, True, False]])
  batch = {"ret_keys": corpus[ids], "ret_ids": ids, "ret_valid": valid, "gt": gt}
  # Original query vectors: for query 0, video 3 ties with the positive (ambiguous), video 6
  # is 0.5 away; for query 1 nothing ties.
  orig = np.zeros((2, E), np.float32)
  orig[0] = corpus[2] + corpus[3]
  orig[1] = corpus[5]
  tau = 0.1
  loss, _ = sft.retrieval_loss(jnp.asarray(q), batch, tau, jnp.asarray(corpus),
                               jnp.asarray(orig), 1e-3)
  s0 = orig @ corpus.T
  for b in range(2):
    logits = corpus @ q[b] / tau
    keep = np.zeros(V, bool)
    keep[ids[b][valid[b]]] = True                   # the keys, once each
    for v in range(V):                              # other videos unless near-tied
      if not keep[v] and abs(s0[b, v] - s0[b, gt[b]]) >= 1e-3:
        keep[v] = True
    if b == 0:
      assert abs(s0[0, 3] - s0[0, 2]) < 1e-3 and not keep[3]
    # Query 1's invalid key (6) is still a corpus negative, counted once.
    if b == 1:
      assert keep[6]
    want = np.log(np.exp(logits[keep]).sum()) - logits[gt[b]]
    np.testing.assert_allclose(float(loss[b]), want, rtol=1e-5)
  # Without the corpus: the keys alone.
  alone, _ = sft.retrieval_loss(jnp.asarray(q), batch, tau)
  logits = np.einsum("be,bke->bk", q, corpus[ids]) / tau
  want = [np.log(np.exp(logits[b][valid[b]]).sum()) - logits[b, 0] for b in range(2)]
  np.testing.assert_allclose(np.asarray(alone), want, rtol=1e-5)


# ------------------------------------------------------------------ sft_loss


@pytest.fixture(scope="module")
def loss_setup():
  config = config_lib.load(SMOKE)
  engine = towers.build_engine(config, VOCAB)
  eshapes = jax.eval_shape(lambda r: towers.init_engine(engine, config, r), jax.random.key(0))
  engine_params = random_params(eshapes, 2)
  rng = np.random.default_rng(0)
  B, L, F, K, E = 4, 8, 8, 3, config.engine.embed_dim
  tokens = rng.integers(2, VOCAB, (B, L)).astype(np.int32)
  tokens[:, 6:] = PAD
  keys = rng.standard_normal((B, 1 + K, E)).astype(np.float32)
  batch = {
      "tokens": tokens,
      "frames": rng.standard_normal((B, F, config.data.feature_dim)).astype(np.float32),
      "num_frames": np.array([8, 5, 3, 6], np.int32),
      "matched": np.array([True, True, False, False]),
      # Unmatched rows' spans are meaningless, here even outside their videos (-inf logits).
      "span": np.array([[1, 3], [4, 4], [5, 7], [2, 1]], np.int32),
      "ret_keys": keys / np.linalg.norm(keys, axis=-1, keepdims=True),
      "ret_valid": np.array([[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 0]], bool),
      "ret_ids": np.arange(B * (1 + K), dtype=np.int32).reshape(B, 1 + K),
      "gt": np.arange(B, dtype=np.int32) * (1 + K),
  }
  return config, engine, engine_params, batch


def loss_and_grad_fn(config, engine, engine_params, agent, matched_first: int = 0,
                     ret_rows: int = 0):
  @jax.jit
  def fn(params, batch):
    return jax.value_and_grad(lambda p: sft.sft_loss(
        agent, engine, p, engine_params, batch, config.sft, config.agent.num_latents,
        matched_first=matched_first, ret_rows=ret_rows), has_aux=True)(params)
  return fn


def random_agent(loss_setup, refine: str, seed: int):
  """(random agent params, jitted loss-and-grad of sft_loss) for the loss_setup's batch."""
  config, engine, engine_params, _ = loss_setup
  agent = policy.build_agent(config, VOCAB, refine)
  shapes = jax.eval_shape(lambda r: policy.init_agent(agent, config, r), jax.random.key(0))
  return random_params(shapes, seed), loss_and_grad_fn(config, engine, engine_params, agent)


def test_sft_loss_hqr_straight_through(loss_setup):
  config, _, _, batch = loss_setup
  params, fn = random_agent(loss_setup, "hqr", 1)
  (loss, metrics), grads = fn(params, batch)
  assert np.isfinite(float(loss))
  for k, v in metrics.items():
    assert np.isfinite(float(v)), k
  for g in jax.tree.leaves(grads):
    assert np.isfinite(np.asarray(g)).all()
  # The retrieval loss reaches the word head only through the straight-through estimator.
  assert np.abs(np.asarray(grads["word_head"]["kernel"])).max() > 1e-7
  for name in ("verify_head", "start_head", "end_head"):
    assert np.abs(np.asarray(grads[name]["kernel"])).max() > 1e-7, name
  # The parts: verify CE over all rows, time CE over the matched half, InfoNCE over the rest.
  w = config.sft
  np.testing.assert_allclose(
      float(loss), float(metrics["verify_ce"]) + w.time_weight * float(metrics["time_ce"]) / 2
      + w.ret_weight * float(metrics["ret_loss"]) / 2, rtol=1e-5)
  assert float(metrics["ret_loss"]) > 0 and float(metrics["time_ce"]) > 0
  # Unmatched rows' span labels and matched rows' retrieval keys do not matter ...
  other = dict(batch)
  other["span"] = np.array([[1, 3], [4, 4], [0, 0], [1, 1]], np.int32)
  keys = np.array(batch["ret_keys"])
  keys[:2] = keys[:2, ::-1]
  other["ret_keys"] = keys
  (loss2, _), _ = fn(params, other)
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
  # ... while unmatched rows' keys do (control), and so does a masked-out key being unmasked.
  keys = np.array(batch["ret_keys"])
  keys[2:] = keys[2:, ::-1]
  (loss3, _), _ = fn(params, dict(batch, ret_keys=keys))
  assert abs(float(loss3) - float(loss)) > 1e-4
  (loss4, _), _ = fn(params, dict(batch, ret_valid=np.ones((4, 4), bool)))
  assert abs(float(loss4) - float(loss)) > 1e-5


def fake_split_and_retrieval(config, rng):
  """A tiny 'train split' and the engine's view of it, as the sft stage reads them."""
  V, Q, E = 20, 40, config.engine.embed_dim
  F, D, Lq = config.data.max_frames, config.data.feature_dim, config.data.max_query_len
  depth = config.sft.hard_pool_depth
  videos = rng.standard_normal((V, E)).astype(np.float32)
  queries = rng.standard_normal((Q, E)).astype(np.float32)
  scores = queries @ videos.T
  top_ids = np.argsort(-scores, axis=1)[:, :depth]
  top_scores = np.take_along_axis(scores, top_ids, 1)
  video_index = np.where(np.arange(Q) % 2 == 0, top_ids[:, 0], top_ids[:, 3])
  num_frames = rng.integers(4, F + 1, V).astype(np.int32)
  tokens = rng.integers(2, VOCAB, (Q, Lq)).astype(np.int32)
  tokens[:, 10:] = PAD
  split = types.SimpleNamespace(
      tokens=tokens, video_index=video_index,
      times=np.sort(rng.uniform(0, 10, (Q, 2)), 1).astype(np.float32),
      features=rng.standard_normal((V, F, D)).astype(np.float32),
      num_frames=num_frames, frame_seconds=np.ones(V, np.float32))
  retrieval = sft_stage.Retrieval(videos=videos, queries=queries, top_ids=top_ids,
                              top_scores=top_scores,
                              gt_score=scores[np.arange(Q), video_index])
  return split, retrieval


def test_sft_step_trains_the_agent_and_leaves_the_engine_alone(loss_setup, monkeypatch):
  """The sft stage's own step: the SQR agent's projectors and heads get gradients through
  the frozen engine, and the engine's parameters stay bit-identical (not donated either)."""
  config, engine, engine_params, _ = loss_setup
  agent = policy.build_agent(config, VOCAB, "sqr")
  split, retrieval = fake_split_and_retrieval(config, np.random.default_rng(1))
  engine_before = jax.tree.map(np.array, engine_params)
  # A random (trained-like) agent instead of the stage's initialisation: at the zero init
  # the latents are 0 and refine_in gets no gradient (and the eager init is slow).
  real_init = policy.init_agent
  monkeypatch.setattr(policy, "init_agent", lambda a, c, r, e=None, g=None: random_params(
      jax.eval_shape(lambda rr: real_init(a, c, rr), r), 3))
  ctx = stages.Context(config, "unused", tokenizer=range(VOCAB), splits={"train": split},
                       engine=engine, params={"engine": engine_params},
                       cache={"train_retrieval": retrieval})
  stage = registry.STAGES.get("sft").loop(ctx)
  assert stage.folder == "sft"
  state = stage.initial_state()
  start = jax.tree.map(np.array, state.params)
  for step in range(2):               # step 0 has learning rate 0 (linear warm-up from 0)
    state, metrics = stage.step_fn(state, stage.batch_fn(step, state), jax.random.key(step))
    for k, v in metrics.items():
      assert np.isfinite(float(v)), k
  after = jax.device_get(state.params)
  for leaf in jax.tree.leaves(engine_params):
    assert not leaf.is_deleted()
  for a, b in zip(jax.tree.leaves(engine_params), jax.tree.leaves(engine_before)):
    np.testing.assert_array_equal(np.asarray(a), b)
  # With Adam and no weight decay a parameter moves iff its gradient was non-zero.
  assert agent.parallel_latents            # the default head: no latent is fed back
  for name in ("refine_out", "refine_in", "refine_words_ln", "append", "verify_head",
               "start_head"):
    key = "scale" if name.endswith("_ln") else "kernel"
    assert np.abs(after[name][key] - start[name][key]).max() > 1e-6, name
  # The HQR word head is not part of the SQR objective, nor (parallel head) latent_in.
  for name in ("word_head", "latent_in"):
    np.testing.assert_array_equal(after[name]["kernel"], start[name]["kernel"])
  assert float(metrics["ret_loss"]) > 0 and float(metrics["grad_norm"]) > 0


def test_sft_loss_reads_the_given_original_query(loss_setup):
  """batch['orig_query'] (the engine's view of the train split, computed once) stands for
  encoding the tokens in the step: the same loss and gradients."""
  _, engine, engine_params, batch = loss_setup
  params, fn = random_agent(loss_setup, "sqr", 3)
  (loss, _), grads = fn(params, batch)
  q0 = engine.apply({"params": engine_params}, batch["tokens"],
                    method=towers.DualEncoder.encode_text)
  (loss2, _), grads2 = fn(params, dict(batch, orig_query=np.asarray(q0)))
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  # Control: another vector is read, not ignored.
  (loss3, _), _ = fn(params, dict(batch, orig_query=-np.asarray(q0)))
  assert abs(float(loss3) - float(loss)) > 1e-6


@pytest.mark.parametrize("refine", ["sqr", "hqr"])
def test_sft_loss_skips_the_refined_queries_of_the_matched_rows_it_is_told_of(loss_setup,
                                                                              refine):
  """matched_first=2 (the batch's first two rows are matched): the engine encodes the other
  two rows' refined queries only, and the loss, metrics and gradients are those of encoding
  all four."""
  config, engine, engine_params, batch = loss_setup
  agent = policy.build_agent(config, VOCAB, refine)
  params = random_params(jax.eval_shape(lambda r: policy.init_agent(agent, config, r),
                                        jax.random.key(0)), 4)
  (loss, metrics), grads = loss_and_grad_fn(config, engine, engine_params, agent)(params, batch)
  rows = []
  real = towers.DualEncoder.encode_text

  def spy(self, tokens, *args, **kwargs):
    rows.append(tokens.shape[0])
    return real(self, tokens, *args, **kwargs)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(towers.DualEncoder, "encode_text", spy)
    fn = loss_and_grad_fn(config, engine, engine_params, agent, matched_first=2)
    (loss2, metrics2), grads2 = fn(params, batch)
  assert rows == [4, 2]                    # the original queries, then the refined ones
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
  for k in metrics:
    np.testing.assert_allclose(float(metrics2[k]), float(metrics[k]), rtol=1e-5, err_msg=k)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-7)


def test_sft_loss_over_a_subset_of_the_not_matched_rows_is_unbiased(loss_setup):
  """ret_rows=1 of the two not-matched rows (matched_first=2): the engine encodes one refined
  query, and the loss over either row, averaged, is the loss over both (L_ret scaled by 2)."""
  config, engine, engine_params, batch = loss_setup
  agent = policy.build_agent(config, VOCAB, "sqr")
  params = random_params(jax.eval_shape(lambda r: policy.init_agent(agent, config, r),
                                        jax.random.key(0)), 5)
  (want, _), _ = loss_and_grad_fn(config, engine, engine_params, agent, 2)(params, batch)
  rows = []
  real = towers.DualEncoder.encode_text

  def spy(self, tokens, *args, **kwargs):
    rows.append(tokens.shape[0])
    return real(self, tokens, *args, **kwargs)

  swapped = {k: np.asarray(v)[[0, 1, 3, 2]] for k, v in batch.items()}
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(towers.DualEncoder, "encode_text", spy)
    fn = loss_and_grad_fn(config, engine, engine_params, agent, 2, ret_rows=1)
    (one, m1), _ = fn(params, batch)
    (other, m2), _ = fn(params, swapped)
  assert rows == [4, 1]                    # the original queries, then one refined query
  assert float(m1["ret_loss"]) != pytest.approx(float(m2["ret_loss"]))
  np.testing.assert_allclose((float(one) + float(other)) / 2, float(want), rtol=1e-5)
