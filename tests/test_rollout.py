"""Tests for vsr_jax.rollout: scan vs unrolled, matched / not-matched episodes, forced replay,
exact vs ScaNN backends. (Gradients through the frozen engine, and the engine left unchanged by
training: tests/test_sft.py, on train.sft_stage's own step.)"""
import dataclasses
import functools
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from params import random_models, random_params

from vsr_jax import config_lib, rollout
from vsr_jax.agent import policy
from vsr_jax.agent.policy import MATCHED, NOT_MATCHED
from vsr_jax.data.tokenizer import PAD
from vsr_jax.engine import index as index_lib
from vsr_jax.engine import towers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"
VOCAB = 40
B, L, V, F, E = 6, 8, 16, 8, 32
SAMPLE = rollout.EpisodeConfig(turns=3, num_latents=1, refine="sqr", sigma=0.05, mode="sample")
RECORD = ("retrieved", "rank", "policy_rank", "verdict", "span", "pred_time", "query")




def with_verify_bias(params, matched: bool):
  """Params surgery: the verify head always says `matched` (or always `not_matched`)."""
  p = jax.tree.map(np.array, params)
  bias = np.zeros(2, np.float32)
  bias[MATCHED if matched else NOT_MATCHED] = 50.0
  p["verify_head"]["bias"] = bias
  return jax.tree.map(jnp.asarray, p)


@pytest.fixture(scope="module")
def setup():
  config = config_lib.load(SMOKE)
  agent, engine, params, engine_params = random_models(config, VOCAB)
  rng = np.random.default_rng(0)
  vectors = rng.standard_normal((V, E)).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  num_frames = rng.integers(2, F + 1, V).astype(np.int32)
  frame_seconds = rng.uniform(0.5, 2.0, V).astype(np.float32)
  durations = (num_frames * frame_seconds - 0.3).astype(np.float32)  # last frame is partial
  features = rng.standard_normal((V, F, config.data.feature_dim)).astype(np.float32)
  corpus = rollout.Corpus(index_lib.ExactIndex.build(vectors), jnp.asarray(features),
                          jnp.asarray(num_frames), jnp.asarray(frame_seconds),
                          jnp.asarray(durations))
  tokens = rng.integers(2, VOCAB, (B, L)).astype(np.int32)
  tokens[np.arange(L)[None] >= rng.integers(2, L + 1, B)[:, None]] = PAD
  gt = rng.integers(0, V, B).astype(np.int32)
  return dict(config=config, agent=agent, engine=engine, params=params,
              engine_params=engine_params, vectors=vectors, corpus=corpus,
              tokens=jnp.asarray(tokens), gt=jnp.asarray(gt))


@functools.lru_cache(maxsize=None)
def episode_fn(agent, engine, spec, unrolled=False):
  return jax.jit(lambda ap, ep, corpus, tokens, gt, rng, forced=None: rollout.episode(
      agent, engine, ap, ep, corpus, tokens, gt, rng, spec, forced=forced, unrolled=unrolled))


def run(s, spec, params=None, corpus=None, rng=0, unrolled=False, forced=None):
  fn = episode_fn(s["agent"], s["engine"], spec, unrolled)
  out = fn(s["params"] if params is None else params, s["engine_params"],
           s["corpus"] if corpus is None else corpus, s["tokens"], s["gt"],
           jax.random.key(rng), forced)
  return jax.tree.map(np.asarray, out)


@pytest.fixture(scope="module")
def sampled(setup):
  return run(setup, SAMPLE, rng=3)


def numpy_search(vectors, q, gt):
  """Top-1 id and the rank of gt (ties to the lower id) of queries q [B, E]."""
  s = np.asarray(q, np.float64) @ np.asarray(vectors, np.float64).T
  gs = s[np.arange(len(gt)), gt][:, None]
  ids = np.arange(s.shape[1])
  ahead = (s > gs) | ((s == gs) & (ids[None] < np.asarray(gt)[:, None]))
  return s.argmax(1), 1 + ahead.sum(1)


# ------------------------------------------------------------------ scan vs unrolled


def test_scan_equals_unrolled(setup, sampled):
  unrolled = run(setup, SAMPLE, rng=3, unrolled=True)
  assert set(unrolled) == set(sampled)
  for k, v in sampled.items():
    assert v.shape == unrolled[k].shape, k
    if v.dtype.kind in "biu":
      np.testing.assert_array_equal(v, unrolled[k], err_msg=k)
    else:
      np.testing.assert_allclose(v, unrolled[k], atol=1e-5, rtol=1e-5, err_msg=k)
  T = SAMPLE.turns
  assert sampled["verdict"].shape == (T, B) and sampled["span"].shape == (T, B, 2)
  assert sampled["refine_logp"].shape == (T, B, 1)
  assert sampled["refine_action"].shape == (T, B, 1, 32)
  assert sampled["query"].shape == (T, B, E) and sampled["final_query"].shape == (B, E)
  # The random policy takes both verdicts (otherwise the comparisons above say little).
  first = sampled["verdict"][0]
  assert (first == MATCHED).any() and (first == NOT_MATCHED).any()


def test_search_is_consistent_with_the_query(setup, sampled):
  for t in range(SAMPLE.turns):
    top, rank = numpy_search(setup["vectors"], sampled["query"][t], setup["gt"])
    act = sampled["active"][t]
    np.testing.assert_array_equal(sampled["retrieved"][t][act], top[act])
    np.testing.assert_array_equal(sampled["rank"][t][act], rank[act])
  np.testing.assert_allclose(sampled["query"][0], sampled["orig_query"], atol=0)


# ------------------------------------------------------------------ matched / not matched


def test_matched_episode_freezes_after_turn_one(setup):
  steps = run(setup, SAMPLE, params=with_verify_bias(setup["params"], True), rng=4)
  T = SAMPLE.turns
  np.testing.assert_array_equal(steps["verdict"], MATCHED)
  first_only = np.broadcast_to(np.arange(T)[:, None] == 0, (T, B))
  np.testing.assert_array_equal(steps["active"], first_only)
  np.testing.assert_array_equal(steps["grounds"], first_only)
  np.testing.assert_array_equal(steps["refines"], False)
  for k in RECORD:
    for t in range(1, T):
      np.testing.assert_array_equal(steps[k][t], steps[k][0], err_msg=f"{k} turn {t}")
  np.testing.assert_array_equal(steps["query"][0], steps["orig_query"])
  np.testing.assert_array_equal(steps["final_query"], steps["orig_query"])
  np.testing.assert_array_equal(steps["policy_rank"][0], steps["rank"][0])
  # The moment: a valid span of the retrieved video, in seconds clipped to its duration.
  c = setup["corpus"]
  vid = steps["retrieved"][0]
  span = steps["span"][0]
  assert (span[:, 0] <= span[:, 1]).all() and (span[:, 1] < np.asarray(c.num_frames)[vid]).all()
  fs, dur = np.asarray(c.frame_seconds)[vid], np.asarray(c.durations)[vid]
  expect = np.stack([np.minimum(span[:, 0] * fs, dur),
                     np.minimum((span[:, 1] + 1) * fs, dur)], -1)
  np.testing.assert_allclose(steps["pred_time"][0], expect, rtol=1e-6)
  # Control: the later turns' own span draws differ from turn 1's (their log-probs are
  # those of fresh draws on the same video), so the equal records above were carried.
  assert np.abs(steps["span_logp"][1:] - steps["span_logp"][:1]).max() > 1e-3


def test_not_matched_episode_refines_until_the_last_turn(setup):
  steps = run(setup, SAMPLE, params=with_verify_bias(setup["params"], False), rng=5)
  T = SAMPLE.turns
  np.testing.assert_array_equal(steps["verdict"], NOT_MATCHED)
  np.testing.assert_array_equal(steps["active"], True)
  np.testing.assert_array_equal(steps["grounds"], False)
  np.testing.assert_array_equal(steps["refines"],
                                np.broadcast_to((np.arange(T) < T - 1)[:, None], (T, B)))
  for t in range(T - 1):
    # The next turn searches with this turn's refined query ...
    np.testing.assert_array_equal(steps["query"][t + 1], steps["next_query"][t])
    # ... which is a different vector (the random agent's soft tokens are non-zero) ...
    assert (np.abs(steps["query"][t + 1] - steps["query"][t]).max(-1) > 1e-3).all()
    # ... and policy_rank scores it.
    np.testing.assert_array_equal(steps["policy_rank"][t], steps["rank"][t + 1])
    _, rank = numpy_search(setup["vectors"], steps["next_query"][t], setup["gt"])
    np.testing.assert_array_equal(steps["policy_rank"][t], rank)
  # The last turn does not refine: its query is final, and policy_rank is its own rank.
  np.testing.assert_array_equal(steps["policy_rank"][-1], steps["rank"][-1])
  np.testing.assert_array_equal(steps["final_query"], steps["query"][-1])
  np.testing.assert_allclose(np.linalg.norm(steps["query"], axis=-1), 1.0, rtol=1e-5)
  # Every refinement is the ORIGINAL query's tokens plus this turn's soft tokens.
  agent, engine = setup["agent"], setup["engine"]
  refined = jax.jit(lambda a: engine.apply(
      {"params": setup["engine_params"]}, setup["tokens"],
      agent.apply({"params": setup["params"]}, a, method=policy.Agent.soft_tokens),
      method=towers.DualEncoder.encode_text))
  for t in range(T - 1):
    np.testing.assert_allclose(steps["next_query"][t], refined(steps["refine_action"][t]),
                               atol=1e-5)
  # The last turn's refined query is never searched: not computed, the turn's own reported.
  np.testing.assert_array_equal(steps["next_query"][-1], steps["query"][-1])


# ------------------------------------------------------------------ forced replay


def test_forced_replay_reproduces_the_log_probs(setup, sampled):
  forced_spec = dataclasses.replace(SAMPLE, mode="forced")
  forced = rollout.forced_actions(sampled)
  replay = run(setup, forced_spec, rng=99, forced=forced)
  act = sampled["active"]
  assert act.sum() > B and (~act).sum() > 0
  for k in ("verdict_logp", "span_logp"):
    np.testing.assert_allclose(replay[k][act], sampled[k][act], atol=1e-5, rtol=1e-5,
                               err_msg=k)
  np.testing.assert_allclose(replay["refine_logp"][act], sampled["refine_logp"][act],
                             atol=1e-4, rtol=1e-4)
  for k in ("verdict", "retrieved", "span", "active", "refines", "grounds"):
    np.testing.assert_array_equal(replay[k], sampled[k], err_msg=k)
  np.testing.assert_array_equal(replay["refine_action"], sampled["refine_action"])
  # The replay really evaluates the policy: other parameters give other log-probs.
  other = run(setup, forced_spec, params=random_params(
      jax.eval_shape(lambda p: p, setup["params"]), 7), forced=forced)
  assert np.abs(other["verdict_logp"][act] - sampled["verdict_logp"][act]).max() > 1e-3
  assert np.abs(other["refine_logp"][act] - sampled["refine_logp"][act]).max() > 1e-3
  # ...of the same observations: the recorded query vectors, not ones its own append
  # projector would rebuild (the agent reads the query vector).
  np.testing.assert_array_equal(other["query"][act], sampled["query"][act])


# ------------------------------------------------------------------ exact vs ScaNN


def test_exact_and_scann_backends_give_the_same_episodes(setup, sampled):
  """Sampled episodes with the same rng (greedy ones would do; this reuses the compiled
  sampling episode and covers both verdicts): identical whenever the searches agree."""
  pytest.importorskip("scann")
  cfg = ml_collections.ConfigDict({
      "num_leaves": 4, "num_leaves_to_search": 4, "training_sample_size": V,
      "dims_per_block": 2, "anisotropic_quantization_threshold": 0.2, "reorder": V,
      "threads": 1})
  c = setup["corpus"]
  scann_corpus = rollout.Corpus(index_lib.ScannIndex.build(setup["vectors"], cfg),
                                c.features, c.num_frames, c.frame_seconds, c.durations)
  exact = sampled
  scann = run(setup, SAMPLE, corpus=scann_corpus, rng=3)
  # No near-ties among the queries searched (else the two backends may legitimately differ).
  for q in list(exact["query"]) + list(exact["next_query"]):
    s = np.sort(q @ setup["vectors"].T, axis=1)
    assert (s[:, -1] - s[:, -2]).min() > 1e-4
  for k in ("retrieved", "rank", "policy_rank", "verdict", "span", "active", "refines"):
    np.testing.assert_array_equal(scann[k], exact[k], err_msg=k)
  for k in ("final_query", "verdict_logp", "span_logp", "refine_logp", "pred_time"):
    np.testing.assert_allclose(scann[k], exact[k], atol=1e-5, err_msg=k)
  assert exact["refines"].any()        # later searches happened with refined queries
  assert len(np.unique(exact["retrieved"])) > 2


def test_a_host_frame_store_on_disk_gives_the_same_episodes(setup, sampled, tmp_path):
  """The frames as a memory-mapped file on disk (HostFrames, read through a callback: only the
  retrieved videos' rows): the same sampled episodes as the device store, and under vmap (a
  GRPO group) too."""
  c = setup["corpus"]
  features = np.asarray(c.features)
  path = tmp_path / "frames.npy"
  stored = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=features.shape)
  stored[:] = features
  stored.flush()
  del stored
  split = types.SimpleNamespace(features=np.load(path, mmap_mode="r"),
                                num_frames=c.num_frames, frame_seconds=c.frame_seconds,
                                durations=c.durations)
  host = rollout.Corpus.from_split(c.index, split, frame_store="host")
  assert isinstance(host.features, rollout.HostFrames)
  assert isinstance(host.features.array, np.memmap)
  assert all(x.ndim < 3 for x in jax.tree.leaves(host))    # no [V, F, D] array
  got = run(setup, SAMPLE, corpus=host, rng=3)
  for k in sampled:
    np.testing.assert_array_equal(got[k], sampled[k], err_msg=k)
  vid = jnp.asarray([[3, 0, 3], [V - 1, 2, 0]])
  frames = jax.jit(jax.vmap(lambda v: host.take(v)[0]))(vid)
  np.testing.assert_array_equal(frames, features[np.asarray(vid)])
  with pytest.raises(ValueError, match="frame_store='disk'"):
    rollout.Corpus.from_split(c.index, split, frame_store="disk")


# ------------------------------------------------------------------ reject-masking


def numpy_order(vectors, q):
  """Every query's videos best first (ties to the lower id)."""
  s = np.asarray(q, np.float64) @ np.asarray(vectors, np.float64).T
  return np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), -s), axis=1)


def test_retrieve_skips_rejected_videos_and_ranks_among_the_rest(setup):
  vectors = setup["vectors"]
  index = index_lib.ExactIndex.build(vectors)
  q = np.random.default_rng(7).standard_normal((4, E)).astype(np.float32)
  order = numpy_order(vectors, q)
  # Query 0: nothing rejected. 1: its top-1 rejected, gt = its 2nd. 2: top-1 and top-2
  # rejected, gt = its 5th (two rejected ahead). 3: gt itself rejected.
  rejected = np.full((4, 2), -1, np.int32)
  rejected[1, 0] = order[1, 0]
  rejected[2] = order[2, :2]
  rejected[3, 1] = order[3, 3]
  gt = np.array([order[0, 2], order[1, 1], order[2, 4], order[3, 3]], np.int32)
  vid, rank, engine_rank = jax.jit(rollout.retrieve)(index, q, gt, rejected)
  np.testing.assert_array_equal(vid, [order[0, 0], order[1, 1], order[2, 2], order[3, 0]])
  np.testing.assert_array_equal(engine_rank, [3, 2, 5, 4])
  np.testing.assert_array_equal(rank, [3, 1, 3, V + 1])


def test_mask_rejected_never_retrieves_a_rejected_video_again(setup):
  """Always not_matched, 3 turns: with mask_rejected no turn retrieves a video an earlier turn
  of its episode retrieved; `rank` counts among the unrejected videos (1 exactly when the
  retrieved video is the ground truth). Without it, the same episode as before the option."""
  never = with_verify_bias(setup["params"], False)
  masked = run(setup, dataclasses.replace(SAMPLE, mask_rejected=True), params=never, rng=5)
  plain = run(setup, SAMPLE, params=never, rng=5)
  for t in range(1, SAMPLE.turns):
    for s in range(t):
      assert (masked["retrieved"][t] != masked["retrieved"][s]).all(), (t, s)
  np.testing.assert_array_equal(masked["rank"] == 1, masked["retrieved"] == setup["gt"][None])
  assert (masked["engine_rank"] >= masked["rank"]).all()
  np.testing.assert_array_equal(plain["engine_rank"], plain["rank"])
  np.testing.assert_array_equal(masked["retrieved"][0], plain["retrieved"][0])
  # The random agent's refined queries stay near the original: unmasked turns repeat videos.
  assert (plain["retrieved"][1:] == plain["retrieved"][:1]).any()


# ------------------------------------------------------------------ calibrated verdicts


def test_matched_margin_zero_is_the_argmax_and_moves_the_verdicts(setup):
  """A matched threshold enters as a logit margin (traced: one compile for every threshold).
  Margin 0 is the argmax exactly; -inf makes every verdict `matched`, +inf none."""
  spec = rollout.EpisodeConfig(turns=2, num_latents=SAMPLE.num_latents, refine=SAMPLE.refine,
                               sigma=SAMPLE.sigma, mode="greedy")
  fn = jax.jit(lambda ap, ep, corpus, tokens, gt, rng, m: rollout.episode(
      setup["agent"], setup["engine"], ap, ep, corpus, tokens, gt, rng, spec,
      matched_margin=m))
  args = (setup["params"], setup["engine_params"], setup["corpus"], setup["tokens"],
          setup["gt"], jax.random.key(0))
  plain = run(setup, spec)
  at = {m: jax.tree.map(np.asarray, fn(*args, jnp.float32(m))) for m in (0.0, -np.inf, np.inf)}
  for k in ("verdict", "retrieved", "rank", "span", "active", "refines", "final_query"):
    np.testing.assert_array_equal(at[0.0][k], plain[k], err_msg=k)
  assert (at[-np.inf]["verdict"][0] == MATCHED).all()
  assert (at[np.inf]["verdict"][0] != MATCHED).all()
  assert at[np.inf]["refines"][0].all() and not at[-np.inf]["refines"][0].any()


def test_a_margin_per_turn(setup):
  """matched_margin [T]: turn t compares with its own (calibration's go-on and final
  thresholds): +inf then -inf refines every query once and matches all at the last turn."""
  spec = rollout.EpisodeConfig(turns=2, num_latents=SAMPLE.num_latents, refine=SAMPLE.refine,
                               sigma=SAMPLE.sigma, mode="greedy")
  fn = jax.jit(lambda ap, ep, corpus, tokens, gt, rng, m: rollout.episode(
      setup["agent"], setup["engine"], ap, ep, corpus, tokens, gt, rng, spec,
      matched_margin=m))
  got = jax.tree.map(np.asarray, fn(
      setup["params"], setup["engine_params"], setup["corpus"], setup["tokens"], setup["gt"],
      jax.random.key(0), jnp.array([np.inf, -np.inf], jnp.float32)))
  assert (got["verdict"][0] != MATCHED).all() and got["refines"][0].all()
  assert (got["verdict"][1] == MATCHED).all() and got["active"][1].all()


def test_a_given_original_query_is_the_encoded_one(setup):
  """orig_query (training passes the engine's view of the train split, computed once) gives
  the episode that encoding the tokens gives."""
  spec = rollout.EpisodeConfig(turns=2, num_latents=SAMPLE.num_latents, refine=SAMPLE.refine,
                               sigma=SAMPLE.sigma, mode="greedy")
  q0 = setup["engine"].apply({"params": setup["engine_params"]}, setup["tokens"],
                             method=rollout.DualEncoder.encode_text)
  fn = jax.jit(lambda ap, ep, corpus, tokens, gt, rng, q: rollout.episode(
      setup["agent"], setup["engine"], ap, ep, corpus, tokens, gt, rng, spec, orig_query=q))
  given = jax.tree.map(np.asarray, fn(setup["params"], setup["engine_params"], setup["corpus"],
                                      setup["tokens"], setup["gt"], jax.random.key(0), q0))
  plain = run(setup, spec)
  for k in ("verdict", "retrieved", "rank", "span", "refines"):
    np.testing.assert_array_equal(given[k], plain[k], err_msg=k)
  np.testing.assert_allclose(given["final_query"], plain["final_query"], atol=1e-6)
  # Control: another vector is read, not ignored (the first search follows it).
  other = jax.tree.map(np.asarray, fn(setup["params"], setup["engine_params"], setup["corpus"],
                                      setup["tokens"], setup["gt"], jax.random.key(0),
                                      -q0))
  assert (other["retrieved"][0] != plain["retrieved"][0]).any()
  np.testing.assert_allclose(other["orig_query"], -np.asarray(q0), atol=1e-6)


@pytest.mark.parametrize("view_query", ["turn", "original"])
def test_view_query_is_the_vector_the_agent_reads(setup, monkeypatch, view_query):
  """rollout.view_query: the engine view the agent reads holds the turn's query vector (the
  refined one after a refinement) or the original query's in every turn."""
  seen = []
  real = rollout.engine_view

  def spy(agent, engine, engine_params, frames, query_vec):
    seen.append(np.asarray(query_vec))
    return real(agent, engine, engine_params, frames, query_vec)

  monkeypatch.setattr(rollout, "engine_view", spy)
  never = with_verify_bias(setup["params"], False)     # every turn refines
  spec = dataclasses.replace(SAMPLE, mode="greedy", view_query=view_query)
  out = jax.tree.map(np.asarray, rollout.episode(
      setup["agent"], setup["engine"], never, setup["engine_params"], setup["corpus"],
      setup["tokens"], setup["gt"], jax.random.key(0), spec, unrolled=True))
  assert setup["agent"].engine_dim and len(seen) == spec.turns
  for t in range(spec.turns):
    want = out["orig_query"] if view_query == "original" else out["query"][t]
    np.testing.assert_allclose(seen[t], want, rtol=1e-6, atol=1e-6)
  assert not np.allclose(out["query"][1], out["orig_query"], atol=1e-4)   # it was refined
