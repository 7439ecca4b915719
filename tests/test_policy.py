"""Tests for vsr_jax.agent.policy: zero/identity init, the KV-cached latent rollout against a
full recompute, span masking, greedy / sample / forced modes, HQR words."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from params import random_params

from vsr_jax import config_lib
from vsr_jax.agent import policy
from vsr_jax.agent.policy import Agent
from vsr_jax.data.tokenizer import PAD
from vsr_jax.engine import towers
from vsr_jax.engine.towers import DualEncoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"
VOCAB = 40
B, L, F, N = 3, 8, 8, 3          # N >= 3: the cache then holds earlier latents' keys
SIGMA = 0.05




def make_inputs(seed=0, lengths=(3, 8, 5), num_frames=(5, 8, 1)):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, VOCAB, (B, L)).astype(np.int32)
  tokens[np.arange(L)[None] >= np.array(lengths)[:, None]] = PAD
  frames = rng.standard_normal((B, F, 32)).astype(np.float32)
  return jnp.asarray(tokens), jnp.asarray(frames), jnp.asarray(num_frames, jnp.int32)


@pytest.fixture(scope="module")
def setup():
  # A rectangular agent (width 48, soft tokens 32 wide): the identity inits are blocks. The
  # reference's head: latents rolled out one position at a time, projectors as METHOD.md §2.
  config = config_lib.load(SMOKE, {"agent.width": "48", "agent.engine_inputs": "False",
                                   "agent.span_prior": "0",
                                   "agent.sqr_head": "rollout", "agent.refine_hidden": "0",
                                   "agent.refine_words": "False"})
  sqr = policy.build_agent(config, VOCAB, "sqr")
  hqr = policy.build_agent(config, VOCAB, "hqr")
  fresh = jax.jit(lambda r: policy.init_agent(sqr, config, r))(jax.random.key(0))
  shapes = jax.eval_shape(lambda r: policy.init_agent(sqr, config, r), jax.random.key(0))
  params = random_params(shapes, 1)
  engine = towers.build_engine(config, VOCAB)
  eshapes = jax.eval_shape(lambda r: towers.init_engine(engine, config, r), jax.random.key(0))
  engine_params = random_params(eshapes, 2)
  return config, sqr, hqr, fresh, params, engine, engine_params


@functools.lru_cache(maxsize=None)
def act_fn(agent, mode, num_latents=N):
  return jax.jit(lambda p, t, f, n, rng=None, forced=None: agent.apply(
      {"params": p}, t, f, n, num_latents=num_latents, mode=mode, sigma=SIGMA, rng=rng,
      forced=forced, method=Agent.act))


# ------------------------------------------------------------------ init


def test_rect_identity():
  np.testing.assert_array_equal(policy.rect_identity(None, (4, 4)), np.eye(4))
  np.testing.assert_array_equal(policy.rect_identity(None, (3, 5)), np.eye(3, 5))
  np.testing.assert_array_equal(policy.rect_identity(None, (5, 3)), np.eye(5, 3))
  assert policy.rect_identity(None, (3, 5)).shape == (3, 5)


def test_init_identity_kernels_rectangular(setup):
  """Agent width 48 != latent width 32: latent_in is the leading identity block."""
  config, agent, _, fresh, _, _, _ = setup
  dl, h = config.engine.text.width, config.agent.width
  assert (dl, h) == (32, 48)
  assert fresh["latent_in"]["kernel"].shape == (dl, h)
  np.testing.assert_array_equal(fresh["latent_in"]["kernel"], np.eye(dl, h))
  np.testing.assert_array_equal(fresh["latent_in"]["bias"], 0.0)
  np.testing.assert_array_equal(fresh["append"]["kernel"], np.eye(dl))
  np.testing.assert_array_equal(fresh["append"]["bias"], 0.0)
  assert fresh["refine_in"]["kernel"].shape == (h, dl)
  assert np.abs(np.asarray(fresh["refine_in"]["kernel"])).max() > 0     # not zero-init
  assert fresh["refine_out"]["kernel"].shape == (dl, dl)
  np.testing.assert_array_equal(fresh["refine_out"]["kernel"], 0.0)
  np.testing.assert_array_equal(fresh["refine_out"]["bias"], 0.0)
  for ln in ("refine_ln", "latent_in_ln", "append_ln"):
    np.testing.assert_array_equal(fresh[ln]["scale"], 1.0)
    np.testing.assert_array_equal(fresh[ln]["bias"], 0.0)


def test_fresh_sqr_leaves_the_query_unchanged(setup):
  config, agent, _, fresh, params, engine, engine_params = setup
  tokens, frames, nf = make_inputs()

  soft_tokens = jax.jit(lambda p, a: agent.apply({"params": p}, a, method=Agent.soft_tokens))

  def run(p):
    out = act_fn(agent, "greedy")(p, tokens, frames, nf)
    return out, soft_tokens(p, out["action"])

  # The engine on its own (one program per call, as test_towers does): inside one program
  # XLA may fuse the two encodings differently and differ in the last bit.
  text = jax.jit(lambda t, s: engine.apply({"params": engine_params}, t, s,
                                           method=DualEncoder.encode_text))
  out, soft = run(fresh)
  assert out["mean"].shape == (B, N, config.engine.text.width)
  np.testing.assert_array_equal(out["mean"], 0.0)
  np.testing.assert_array_equal(out["action"], 0.0)
  np.testing.assert_array_equal(soft, 0.0)
  plain = np.asarray(text(tokens, None))
  np.testing.assert_array_equal(np.asarray(text(tokens, soft)), plain)
  # Control: a trained-like (random) agent's soft tokens do move the query.
  _, soft = run(params)
  assert (np.abs(np.asarray(text(tokens, soft)) - plain).max(-1) > 1e-3).all()


# ------------------------------------------------------------------ KV cache vs full recompute


def full_hidden(m, tokens, frames, num_frames, latent_inputs):
  """The agent's blocks over [prefix, latent inputs] at once, with a prefix-LM mask.

  latent_inputs [B, K, H] (already through latent_input / embed_word). Returns ln_out(x)
  [B, P + K, H] and P."""
  Bn = tokens.shape[0]
  K = latent_inputs.shape[1]
  prefix, valid = m.prefix_inputs(tokens, frames, num_frames)
  x = jnp.concatenate([prefix, latent_inputs + m.latent_pos[:K]], axis=1)
  P = valid.shape[1]
  qi = jnp.arange(P + K)[:, None]
  ki = jnp.arange(P + K)[None, :]
  to_prefix = (ki < P)[None] & jnp.pad(valid, ((0, 0), (0, K)))[:, None, :]
  to_latent = ((ki >= P) & (qi >= P) & (ki <= qi))[None]
  mask = to_prefix | to_latent
  for block in m.blocks:
    x, _ = block(x, mask)
  return m.ln_out(x), P


def full_forced(m, tokens, frames, num_frames, actions, refine):
  """Means / logits at the N refinement positions given the N actions, in one pass."""
  K = actions.shape[1] - 1
  if refine == "sqr":
    inputs = m.latent_input(actions[:, :K])
  else:
    inputs = m.embed_word(actions[:, :K])
  hidden, P = full_hidden(m, tokens, frames, num_frames, inputs)
  h = hidden[:, P - 1:P + K]
  verify, span = m.heads_out(hidden[:, :P], num_frames, tokens.shape[1])
  if m.refine_words:   # every position also reads the query's bag of words
    Bn, K1, H = h.shape
    h = m.refine_state(h.reshape(-1, H), jnp.repeat(tokens, K1, 0)).reshape(Bn, K1, -1)
  out = m.to_latent(h) if refine == "sqr" else m.word_logits(h)
  return out, verify, span


@pytest.fixture(scope="module")
def words_setup():
  """The rollout head with agent.refine_words: (sqr, sqr params, hqr, hqr params)."""
  config = config_lib.load(SMOKE, {"agent.width": "48", "agent.engine_inputs": "False",
                                   "agent.span_prior": "0",
                                   "agent.sqr_head": "rollout", "agent.refine_words": "True"})
  out = []
  for refine in ("sqr", "hqr"):
    agent = policy.build_agent(config, VOCAB, refine)
    shapes = jax.eval_shape(lambda r: policy.init_agent(agent, config, r), jax.random.key(0))
    out += [agent, random_params(shapes, 4)]
  return tuple(out)


@pytest.mark.parametrize("words", [False, True])
@pytest.mark.parametrize("refine", ["sqr", "hqr"])
def test_cached_rollout_equals_full_recompute_forced(setup, words_setup, refine, words):
  _, sqr, hqr, _, params, _, _ = setup
  agent = sqr if refine == "sqr" else hqr
  if words:
    agent, params = words_setup[:2] if refine == "sqr" else words_setup[2:]
  tokens, frames, nf = make_inputs(seed=1)
  rng = np.random.default_rng(7)
  if refine == "sqr":
    actions = jnp.asarray(rng.standard_normal((B, N, 32)), jnp.float32)
  else:
    actions = jnp.asarray(rng.integers(0, VOCAB, (B, N)), jnp.int32)
  out = act_fn(agent, "forced")(params, tokens, frames, nf, forced=actions)
  full, verify, span = jax.jit(lambda p: agent.apply(
      {"params": p}, tokens, frames, nf, actions, refine,
      method=full_forced))(params)
  got = out["mean"] if refine == "sqr" else out["logits"]
  assert got.shape == full.shape
  np.testing.assert_allclose(got, full, atol=2e-5, rtol=1e-4)
  # Every refinement position is different (a wrong position embedding / mask would show).
  assert np.abs(np.diff(np.asarray(full), axis=1)).max() > 1e-3
  np.testing.assert_allclose(out["verify"], verify, atol=2e-5, rtol=1e-4)
  np.testing.assert_array_equal(np.isneginf(out["span"]), np.isneginf(span))
  ok = np.isfinite(np.asarray(span))
  np.testing.assert_allclose(np.asarray(out["span"])[ok], np.asarray(span)[ok], atol=2e-5,
                             rtol=1e-4)
  if refine == "sqr":
    np.testing.assert_array_equal(out["action"], actions)
  else:
    np.testing.assert_array_equal(out["words"], actions)


def test_cached_rollout_greedy_feeds_back_its_means(setup):
  """Greedy = forced with its own means as actions (and forced = the full recompute, above)."""
  _, agent, _, _, params, _, _ = setup
  tokens, frames, nf = make_inputs(seed=2)
  out = act_fn(agent, "greedy")(params, tokens, frames, nf)
  np.testing.assert_array_equal(out["action"], out["mean"])
  replay = act_fn(agent, "forced")(params, tokens, frames, nf, forced=out["mean"])
  np.testing.assert_allclose(replay["mean"], out["mean"], atol=1e-5, rtol=1e-5)
  # Control: other actions fed back give other later means (the first is the same). Random:
  # latent_input's LayerNorm would undo a constant shift.
  noise = np.random.default_rng(9).standard_normal(out["mean"].shape).astype(np.float32)
  shifted = act_fn(agent, "forced")(params, tokens, frames, nf, forced=out["mean"] + noise)
  np.testing.assert_allclose(shifted["mean"][:, 0], out["mean"][:, 0], atol=1e-5)
  assert np.abs(np.asarray(shifted["mean"][:, 1:] - out["mean"][:, 1:])).max() > 1e-4


def test_latents_ignore_padding(setup):
  """Frames beyond num_frames are never read (by the heads or by the latents)."""
  _, agent, _, _, params, _, _ = setup
  tokens, frames, nf = make_inputs(seed=3)
  base = act_fn(agent, "greedy")(params, tokens, frames, nf)
  rng = np.random.default_rng(4)
  pad_frames = np.arange(F)[None, :, None] >= np.asarray(nf)[:, None, None]
  noisy = np.where(pad_frames, 100 * rng.standard_normal(frames.shape), frames)
  out = act_fn(agent, "greedy")(params, tokens, jnp.asarray(noisy, jnp.float32), nf)
  np.testing.assert_allclose(out["mean"], base["mean"], atol=1e-5)
  np.testing.assert_allclose(out["verify"], base["verify"], atol=1e-5)
  # Control: a valid frame does matter.
  moved = np.array(frames)
  moved[:, 0] += rng.standard_normal((B, 32)).astype(np.float32)
  out = act_fn(agent, "greedy")(params, tokens, jnp.asarray(moved), nf)
  assert np.abs(np.asarray(out["mean"]) - np.asarray(base["mean"])).max() > 1e-4


# ------------------------------------------------------------------ heads and modes


def test_span_logits_masked_exactly_outside_valid_spans(setup):
  _, agent, _, _, params, _, _ = setup
  tokens, frames, _ = make_inputs()
  nf = jnp.asarray([1, 5, F], jnp.int32)
  span = np.asarray(act_fn(agent, "greedy")(params, tokens, frames, nf)["span"])
  assert span.shape == (B, F, F)
  s = np.arange(F)[:, None]
  e = np.arange(F)[None, :]
  for b, n in enumerate(np.asarray(nf)):
    ok = (s <= e) & (e < n)
    assert np.all(np.isneginf(span[b][~ok]))
    assert np.all(np.isfinite(span[b][ok]))
  # The best span is a valid one even when only one frame is valid.
  flat = span.reshape(B, -1).argmax(-1)
  assert (flat // F <= flat % F).all() and (flat % F < np.asarray(nf)).all()
  assert flat[0] == 0


def test_sample_mode_sqr(setup):
  _, agent, _, _, params, _, _ = setup
  tokens, frames, nf = make_inputs()
  fn = act_fn(agent, "sample")
  a = fn(params, tokens, frames, nf, rng=jax.random.key(5))
  again = fn(params, tokens, frames, nf, rng=jax.random.key(5))
  other = fn(params, tokens, frames, nf, rng=jax.random.key(6))
  np.testing.assert_array_equal(a["action"], again["action"])
  np.testing.assert_array_equal(a["mean"], again["mean"])
  assert np.abs(np.asarray(a["action"]) - np.asarray(other["action"])).min() > 0
  noise = (np.asarray(a["action"]) - np.asarray(a["mean"])) / SIGMA
  assert 0.8 < noise.std() < 1.2 and abs(noise.mean()) < 0.2
  # The first mean does not depend on the sample; later ones do (the sample is fed back).
  greedy = act_fn(agent, "greedy")(params, tokens, frames, nf)
  np.testing.assert_allclose(a["mean"][:, 0], greedy["mean"][:, 0], atol=1e-6)
  assert np.abs(np.asarray(a["mean"][:, 1:]) - np.asarray(greedy["mean"][:, 1:])).max() > 1e-5
  # Forced mode replays the sample exactly: same actions, same means.
  f = act_fn(agent, "forced")(params, tokens, frames, nf, forced=a["action"])
  np.testing.assert_array_equal(f["action"], a["action"])
  np.testing.assert_allclose(f["mean"], a["mean"], atol=1e-5)
  np.testing.assert_allclose(f["verify"], a["verify"], atol=1e-6)


def test_hqr_modes(setup):
  _, _, agent, _, params, _, _ = setup
  tokens, frames, nf = make_inputs()
  fn = act_fn(agent, "sample")
  samples = [fn(params, tokens, frames, nf, rng=jax.random.key(k)) for k in range(3)]
  assert samples[0]["logits"].shape == (B, N, VOCAB) and samples[0]["words"].shape == (B, N)
  assert "mean" not in samples[0] and "action" not in samples[0]
  for s in samples:
    w = np.asarray(s["words"])
    assert np.issubdtype(w.dtype, np.integer)
    assert w.min() >= 0 and w.max() < VOCAB
  np.testing.assert_array_equal(
      samples[0]["words"], fn(params, tokens, frames, nf, rng=jax.random.key(0))["words"])
  assert any(np.any(np.asarray(s["words"]) != np.asarray(samples[0]["words"]))
             for s in samples[1:])
  f = act_fn(agent, "forced")(params, tokens, frames, nf, forced=samples[1]["words"])
  np.testing.assert_array_equal(f["words"], samples[1]["words"])
  np.testing.assert_allclose(f["logits"], samples[1]["logits"], atol=1e-5)


@pytest.mark.parametrize("refine", ["sqr", "hqr"])
def test_refine_rows_are_the_full_batchs_rows(setup, refine):
  """act(refine_rows=(1, 3)): the refinement of rows 1-2 only (their cache sliced), equal to
  those rows of the whole batch's; verify and span keep every row."""
  _, sqr, hqr, _, params, _, _ = setup
  agent = sqr if refine == "sqr" else hqr
  tokens, frames, nf = make_inputs(seed=3)
  whole = act_fn(agent, "greedy")(params, tokens, frames, nf)
  part = jax.jit(lambda p: agent.apply(
      {"params": p}, tokens, frames, nf, num_latents=N, mode="greedy", sigma=SIGMA,
      refine_rows=(1, 3), method=Agent.act))(params)
  keys = ("mean", "action") if refine == "sqr" else ("logits", "words")
  for k in keys:
    assert part[k].shape == (2,) + whole[k].shape[1:]
    np.testing.assert_allclose(part[k], whole[k][1:3], atol=1e-5, rtol=1e-5)
  # Rows differ (a slice of the wrong rows would show).
  assert np.abs(np.asarray(whole[keys[0]][0] - whole[keys[0]][1])).max() > 1e-4
  np.testing.assert_allclose(part["verify"], whole["verify"], atol=1e-5, rtol=1e-5)


def test_no_latents(setup):
  _, sqr, hqr, _, params, _, _ = setup
  tokens, frames, nf = make_inputs()
  out = jax.eval_shape(lambda p: sqr.apply({"params": p}, tokens, frames, nf, num_latents=0,
                                           mode="greedy", sigma=SIGMA, method=Agent.act),
                       params)
  assert out["mean"].shape == (B, 0, 32) and out["action"].shape == (B, 0, 32)
  out = jax.eval_shape(lambda p: hqr.apply({"params": p}, tokens, frames, nf, num_latents=0,
                                           mode="sample", sigma=SIGMA,
                                           rng=jax.random.key(0), method=Agent.act), params)
  assert out["logits"].shape == (B, 0, VOCAB) and out["words"].shape == (B, 0)


# ------------------------------------------------------------------ the parallel SQR head


@pytest.fixture(scope="module")
def parallel_setup():
  """agent.sqr_head=parallel with the query's bag of words read by refine_projector."""
  config = config_lib.load(SMOKE, {"agent.width": "48", "agent.engine_inputs": "False",
                                   "agent.span_prior": "0",
                                   "agent.sqr_head": "parallel", "agent.refine_words": "True",
                                   "agent.refine_hidden": "40", "agent.num_latents": str(N),
                                   "agent.latent_eps": "1.0"})
  agent = policy.build_agent(config, VOCAB, "sqr")
  assert agent.parallel_latents == N
  fresh = jax.jit(lambda r: policy.init_agent(agent, config, r))(jax.random.key(0))
  shapes = jax.eval_shape(lambda r: policy.init_agent(agent, config, r), jax.random.key(0))
  return config, agent, fresh, random_params(shapes, 3)


def test_parallel_head_shapes_and_zero_init(parallel_setup):
  config, agent, fresh, _ = parallel_setup
  dl = config.engine.text.width
  # refine_in reads [hidden (48), bag of words (48)] into 40 units; refine_out emits N latents.
  assert fresh["refine_in"]["kernel"].shape == (48 + 48, 40)
  assert fresh["refine_out"]["kernel"].shape == (40, N * dl)
  np.testing.assert_array_equal(fresh["refine_out"]["kernel"], 0.0)
  tokens, frames, nf = make_inputs()
  out = act_fn(agent, "greedy")(fresh, tokens, frames, nf)
  assert out["mean"].shape == (B, N, dl)
  np.testing.assert_array_equal(out["mean"], 0.0)     # a fresh head changes no query
  soft = agent.apply({"params": fresh}, out["action"], method=Agent.soft_tokens)
  np.testing.assert_array_equal(soft, 0.0)


def test_parallel_head_reads_the_query_not_the_samples(parallel_setup):
  """Every latent comes from [REFINE]'s state at once: a sample does not move later means;
  the query's words move them (also through the bag of words); fewer latents are a prefix."""
  _, agent, _, params = parallel_setup
  tokens, frames, nf = make_inputs(seed=5)
  greedy = act_fn(agent, "greedy")(params, tokens, frames, nf)
  sample = act_fn(agent, "sample")(params, tokens, frames, nf, rng=jax.random.key(1))
  np.testing.assert_allclose(sample["mean"], greedy["mean"], atol=1e-6)
  assert np.abs(np.asarray(sample["action"] - sample["mean"])).min() > 0
  assert np.abs(np.diff(np.asarray(greedy["mean"]), axis=1)).max() > 1e-3   # N distinct
  two = act_fn(agent, "greedy", 2)(params, tokens, frames, nf)
  np.testing.assert_allclose(two["mean"], greedy["mean"][:, :2], atol=1e-6)
  other = np.array(tokens)
  other[:, 0] = np.where(other[:, 0] == 2, 3, 2)
  moved = act_fn(agent, "greedy")(params, jnp.asarray(other), frames, nf)
  assert (np.abs(np.asarray(moved["mean"] - greedy["mean"])).max((1, 2)) > 1e-4).all()
  # The bag of words alone reaches the latents: its LayerNorm's offset moves every latent.
  bumped = jax.tree.map(lambda x: x, params)
  bumped["refine_words_ln"] = {"scale": params["refine_words_ln"]["scale"],
                               "bias": params["refine_words_ln"]["bias"] + 1.0}
  out = act_fn(agent, "greedy")(bumped, tokens, frames, nf)
  assert np.abs(np.asarray(out["mean"] - greedy["mean"])).max() > 1e-4
  with pytest.raises(ValueError, match="parallel SQR head that emits"):
    act_fn(agent, "greedy", N + 1)(params, tokens, frames, nf)


def test_hqr_agent_has_no_parallel_head():
  config = config_lib.load(SMOKE, {"agent.sqr_head": "parallel"})
  assert policy.build_agent(config, VOCAB, "sqr").parallel_latents == config.agent.num_latents
  assert policy.build_agent(config, VOCAB, "hqr").parallel_latents == 0


def test_depthwise_frame_conv_is_nn_conv():
  """The frame convolution as shifted products has nn.Conv's parameters (same names, shapes,
  initial values) and function, so checkpoints of either load into the other."""
  import flax.linen as nn   # pylint: disable=g-import-not-at-top
  from vsr_jax.agent.policy import DepthwiseFrameConv   # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 11, 8))
  conv = nn.Conv(8, kernel_size=(5,), padding="SAME", feature_group_count=8)
  ours = DepthwiseFrameConv(8, kernel_size=5)
  p_conv, p_ours = conv.init(jax.random.PRNGKey(0), x), ours.init(jax.random.PRNGKey(0), x)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), p_conv, p_ours))
  p = jax.tree.map(lambda a: a + 0.1, p_conv)
  np.testing.assert_allclose(ours.apply(p, x), conv.apply(p, x), atol=1e-5)


# ------------------------------------------------------------------ span prior


@pytest.fixture(scope="module")
def prior_setup():
  """The default agent (engine inputs, span_prior) with random parameters."""
  config = config_lib.load(SMOKE)
  assert config.agent.span_prior > 0 and config.agent.engine_inputs
  agent = policy.build_agent(config, VOCAB, "sqr")
  shapes = jax.eval_shape(lambda r: policy.init_agent(agent, config, r), jax.random.key(0))
  params = random_params(shapes, 4)
  fresh = jax.jit(lambda r: policy.init_agent(agent, config, r))(jax.random.key(0))
  return config, agent, params, fresh


def test_span_prior_is_the_engines_window(prior_setup):
  """With a large prior scale the agent's best span is the engine's own frame_similarity
  window (encode.best_window on the raw query-frame scores), frame for frame; at scale 0 the
  span logits are the heads' alone."""
  from vsr_jax.engine import encode   # pylint: disable=g-import-not-at-top
  config, agent, params, fresh = prior_setup
  assert float(fresh["span_prior_scale"]) == config.agent.span_prior
  E = config.engine.embed_dim
  rng = np.random.default_rng(5)
  tokens, frames, _ = make_inputs()
  frames = jnp.asarray(rng.standard_normal((B, F, config.data.feature_dim)), jnp.float32)
  nf = jnp.asarray([3, 8, 6], jnp.int32)
  engine_frames = jnp.asarray(rng.standard_normal((B, F, E)) * rng.uniform(0.5, 2, (B, F, 1)),
                              jnp.float32)
  query_vec = jnp.asarray(rng.standard_normal((B, E)), jnp.float32)
  act = jax.jit(lambda p: agent.apply({"params": p}, tokens, frames, nf, num_latents=0,
                                      mode="greedy", sigma=1.0, method=Agent.act,
                                      engine_frames=engine_frames, query_vec=query_vec)["span"])
  big = act(dict(params, span_prior_scale=jnp.float32(1e4)))
  flat = np.asarray(big).reshape(B, -1).argmax(-1)
  start, end = encode.best_window(jnp.einsum("bfe,be->bf", engine_frames, query_vec), nf)
  np.testing.assert_array_equal(flat // F, start)
  np.testing.assert_array_equal(flat % F, end)
  off = np.asarray(act(dict(params, span_prior_scale=jnp.float32(0.0))))
  one = np.asarray(act(dict(params, span_prior_scale=jnp.float32(1.0))))
  gain = np.asarray(agent.apply({"params": params}, engine_frames, query_vec, nf,
                                method=Agent.window_gain))
  ok = np.isfinite(off)
  assert np.isfinite(one).sum() == ok.sum()
  np.testing.assert_allclose(one[ok], off[ok] + gain[ok], rtol=1e-5, atol=1e-5)
  # The gain reads valid frames only: what lies past a video's end changes nothing.
  padded = engine_frames.at[0, 3:].set(100.0)
  gain2 = np.asarray(agent.apply({"params": params}, padded, query_vec, nf,
                                 method=Agent.window_gain))
  np.testing.assert_allclose(gain2[0, :3, :3], gain[0, :3, :3], rtol=1e-5, atol=1e-6)


def test_window_gain_of_a_flat_video_is_flat(prior_setup):
  """Frames that all score alike (still or repeated frames) give no window a gain: the
  rounding noise of their mean is not standardised up to unit scale."""
  _, agent, params, _ = prior_setup
  E = 16
  query_vec = jnp.ones((B, E), jnp.float32)
  for level in (0.3, 0.77, 3.3, 17.1):
    engine_frames = jnp.full((B, F, E), level / E, jnp.float32)
    gain = np.asarray(agent.apply({"params": params}, engine_frames, query_vec,
                                  jnp.asarray([F, 7, 1], jnp.int32), method=Agent.window_gain))
    assert np.abs(gain).max() < 1e-2, level


def dataclasses_replace_engine_dim(agent):
  """The agent without the engine's view (a module built directly, not from a config)."""
  return agent.clone(engine_dim=0)


def test_span_prior_needs_the_engines_view():
  from vsr_jax import defaults   # pylint: disable=g-import-not-at-top
  with pytest.raises(config_lib.InputError, match="agent.span_prior"):
    defaults.validate(config_lib.load(SMOKE, {"agent.engine_inputs": "False"}))
  config = config_lib.load(SMOKE)
  config.agent.span_prior = float("inf")      # as a config file could set it
  with pytest.raises(config_lib.InputError, match="agent.span_prior=inf: expected a finite"):
    defaults.validate(config)
  agent = dataclasses_replace_engine_dim(policy.build_agent(config_lib.load(SMOKE), VOCAB, "sqr"))
  with pytest.raises(ValueError, match="span_prior > 0 reads the engine's view"):
    jax.eval_shape(lambda r: policy.init_agent(agent, config_lib.load(SMOKE), r),
                   jax.random.key(0))
  defaults.validate(config_lib.load(SMOKE, {"agent.engine_inputs": "False",
                                            "agent.span_prior": "0"}))


def test_engine_words_start_from_the_engines_word_vectors(setup):
  """agent.engine_words: the agent's table is the engine text tower's word vectors at their
  own width, mapped to the trunk's; without the engine, init gives a template of the same
  shapes (what a restore fills)."""
  config, _, _, _, _, engine, engine_params = setup
  cfg = config_lib.load(SMOKE, {"agent.width": "48", "agent.engine_inputs": "False",
                                "agent.span_prior": "0", "agent.engine_words": "True"})
  agent = policy.build_agent(cfg, VOCAB, "sqr")
  assert agent.word_dim == cfg.engine.text.width != cfg.agent.width
  params = policy.init_agent(agent, cfg, jax.random.key(0), engine_params, engine)
  want = engine.apply({"params": engine_params}, jnp.arange(VOCAB)[None],
                      method=DualEncoder.word_vectors)[0]
  np.testing.assert_array_equal(params["word_embed"]["embedding"], want)
  assert params["word_proj"]["kernel"].shape == (cfg.engine.text.width, 48)
  tokens, frames, nf = make_inputs()
  out = act_fn(agent, "greedy", cfg.agent.num_latents)(params, tokens, frames, nf)
  assert out["verify"].shape == (B, 2) and bool(jnp.isfinite(out["mean"]).all())
  template = policy.init_agent(agent, cfg, jax.random.key(0))
  assert jax.tree.map(jnp.shape, template) == jax.tree.map(jnp.shape, params)
  assert not np.array_equal(template["word_embed"]["embedding"], want)
