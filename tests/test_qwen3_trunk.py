"""Tests for vsr_jax.agent.qwen3_trunk: a pretrained Qwen3 decoder as the agent's trunk (loaded
weights, causal prefix, the KV-cached latent rollout against a full recompute, LoRA vs full
fine-tuning, HQR's tied output layer) and its configuration errors."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vsr_jax import config_lib, defaults
from vsr_jax.agent import policy
from vsr_jax.agent.policy import Agent
from vsr_jax.data.tokenizer import PAD
from vsr_jax.engine import towers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))
import tiny_qwen3  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIG = os.path.join(REPO, "configs", "qwen3.py") + ":smoke"
B, L, N = 2, 16, 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return tiny_qwen3.make(str(tmp_path_factory.mktemp("tiny") / "qwen3"))


def make_config(model_dir, **over):
  fields = {"engine.text.pretrained_dir": model_dir, "agent.backbone_dir": model_dir,
            "agent.sqr_head": "rollout", "agent.num_latents": str(N),
            "engine.text.num_slots": str(N)}
  fields.update({k: str(v) for k, v in over.items()})
  return config_lib.load(CONFIG, fields)


def inputs(config, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, 400, (B, L)).astype(np.int32)
  tokens[1, 5:] = PAD
  F, D = config.data.max_frames, config.data.feature_dim
  frames = rng.standard_normal((B, F, D)).astype(np.float32)
  return jnp.asarray(tokens), jnp.asarray(frames), jnp.asarray([F, 7], jnp.int32)


def engine_view(config, frames):
  e = config.engine.embed_dim
  return jnp.ones(frames.shape[:2] + (e,)) * 0.1, jnp.ones((frames.shape[0], e)) / np.sqrt(e)


@pytest.fixture(scope="module")
def lora(model_dir):
  config = make_config(model_dir)
  agent = policy.build_agent(config, 513, "sqr")
  params = policy.init_agent(agent, config, jax.random.key(0))
  return config, agent, params


def test_loads_the_checkpoint(lora, model_dir):
  from safetensors.numpy import load_file
  config, agent, params = lora
  raw = load_file(os.path.join(model_dir, "model.safetensors"))
  w = params["trunk"]["pretrained"]
  np.testing.assert_array_equal(w["embed"], raw["model.embed_tokens.weight"])
  np.testing.assert_array_equal(w["down"][0], raw["model.layers.0.mlp.down_proj.weight"].T)
  assert agent.width == 64 and set(params["trunk"]) == {"pretrained", "lora"}
  assert "word_embed" not in params and "block0" not in params   # no scratch trunk


def test_cached_latent_rollout_equals_full_recompute(lora):
  """Forced latents through the KV cache equal one causal pass over prefix + latent inputs."""
  config, agent, params = lora
  params = jax.tree.map(lambda x: x, params)
  # Non-zero refine projector so that the means are not all zero.
  params["refine_out"] = {"kernel": 0.1 * jax.random.normal(
      jax.random.key(3), params["refine_out"]["kernel"].shape), "bias":
      params["refine_out"]["bias"]}
  tokens, frames, nf = inputs(config)
  ef, qv = engine_view(config, frames)
  forced = jax.random.normal(jax.random.key(4), (B, N, config.engine.text.width))
  out = jax.jit(lambda p: agent.apply(
      {"params": p}, tokens, frames, nf, num_latents=N, mode="forced", sigma=0.05,
      forced=forced, engine_frames=ef, query_vec=qv, method=Agent.act))(params)

  def full(m):
    x, valid = m.prefix_inputs(tokens, frames, nf, ef, qv)
    lat = m.latent_input(forced[:, :N - 1])
    x = jnp.concatenate([x, lat], 1)
    ok = jnp.concatenate([valid, jnp.ones((B, N - 1), bool)], 1)
    S = x.shape[1]
    mask = ok[:, None, :] & jnp.tril(jnp.ones((S, S), bool))[None]
    # Positions count valid tokens (a padded query leaves no gap), latents after them.
    hidden, _ = m.trunk(x, mask, jnp.maximum(jnp.cumsum(ok, 1) - 1, 0), None)
    P = valid.shape[1]
    return jnp.stack([m.to_latent(hidden[:, P - 1 + k]) for k in range(N)], 1)

  want = jax.jit(lambda p: agent.apply({"params": p}, method=full))(params)
  np.testing.assert_allclose(out["mean"], want, atol=2e-5)
  assert float(jnp.abs(want).max()) > 0.1
  # The second row's refinement alone (its [layers, B, ...] cache sliced on the batch axis).
  one = jax.jit(lambda p: agent.apply(
      {"params": p}, tokens, frames, nf, num_latents=N, mode="forced", sigma=0.05,
      forced=forced[1:], engine_frames=ef, query_vec=qv, refine_rows=(1, 2),
      method=Agent.act))(params)
  np.testing.assert_allclose(one["mean"], want[1:], atol=2e-5)


def test_verdict_reads_the_last_position(lora):
  config, agent, params = lora
  tokens, frames, nf = inputs(config)
  ef, qv = engine_view(config, frames)

  @jax.jit
  def verify(f):
    return agent.apply({"params": params}, tokens, f, nf, num_latents=0, mode="greedy",
                       sigma=0.05, engine_frames=ef, query_vec=qv, method=Agent.act)["verify"]

  # The last frame of row 0 is after [VERIFY] but before [REFINE]: the verdict must see it.
  other = jax.random.normal(jax.random.key(5), frames.shape[-1:])
  moved = verify(frames.at[0, -1].set(other))
  assert float(jnp.abs(moved[0] - verify(frames)[0]).max()) > 1e-4


def _grads(config, agent, params):
  tokens, frames, nf = inputs(config)
  ef, qv = engine_view(config, frames)

  def loss(p):
    out = agent.apply({"params": p}, tokens, frames, nf, num_latents=N, mode="greedy",
                      sigma=0.05, engine_frames=ef, query_vec=qv, method=Agent.act)
    span = jnp.where(jnp.isfinite(out["span"]), out["span"], 0.0)
    return out["verify"].sum() + span.sum() * 1e-3
  return jax.jit(jax.grad(loss))(params)


def test_lora_trains_adapters_only(lora):
  config, agent, params = lora
  g = _grads(config, agent, params)
  assert all(float(jnp.abs(v).max()) == 0 for v in jax.tree.leaves(g["trunk"]["pretrained"]))
  # B starts at zero, so A's gradient is zero at first; B's is not.
  assert float(jnp.abs(g["trunk"]["lora"]["q_b"]).max()) > 0
  tx = towers.freeze(optax.adamw(1e-2, weight_decay=0.5), params)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  assert all(float(jnp.abs(u).max()) == 0
             for u in jax.tree.leaves(updates["trunk"]["pretrained"]))


def test_full_fine_tuning(model_dir):
  config = make_config(model_dir, **{"agent.lora_rank": 0})
  agent = policy.build_agent(config, 513, "sqr")
  params = policy.init_agent(agent, config, jax.random.key(0))
  assert set(params["trunk"]) == {"backbone"}
  g = _grads(config, agent, params)
  assert float(jnp.abs(g["trunk"]["backbone"]["q"]).max()) > 0
  tx = optax.sgd(1.0)
  assert towers.freeze(tx, params) is tx   # nothing frozen: the optimizer as it is
  assert params["trunk"]["backbone"]["q"].dtype == jnp.float32   # master weights


def test_hqr_uses_the_tied_embedding(lora, model_dir):
  config, _, params = lora
  hqr = policy.build_agent(config, 513, "hqr")
  p = policy.init_agent(hqr, config, jax.random.key(0))
  h = jax.random.normal(jax.random.key(1), (B, 64))
  logits = hqr.apply({"params": p}, h, method=Agent.word_logits)
  assert logits.shape == (B, 513) and float(logits[:, 0].max()) < -1e8
  table = p["trunk"]["pretrained"]["embed"]
  np.testing.assert_allclose(logits[:, 1:], h @ table.T, rtol=1e-5, atol=1e-4)
  assert "word_head" not in p


def test_needs_the_qwen3_engine(model_dir):
  config = make_config(model_dir, **{"engine.text.kind": "scratch", "engine.text.width": 64})
  with pytest.raises(config_lib.ConfigError, match="needs engine.text.kind='qwen3'"):
    from vsr_jax import registry
    registry.AGENT_BACKBONES.get("qwen3").check(config)


def test_needs_a_directory_and_the_same_vocabulary(model_dir):
  config = make_config(model_dir, **{"agent.backbone_dir": ""})
  with pytest.raises(config_lib.ConfigError, match="config.agent.backbone_dir is .*: expected a local directory"):
    policy.build_agent(config, 513, "sqr")
  with pytest.raises(config_lib.ConfigError, match="must share a tokenizer"):
    policy.build_agent(make_config(model_dir), 300, "sqr")


def test_unknown_backbone_is_a_config_error(model_dir):
  config = make_config(model_dir, **{"agent.backbone": "qwen4"})
  with pytest.raises(config_lib.ConfigError, match="agent.backbone='qwen4'.*known: qwen3, "
                                                   "scratch"):
    defaults.validate(config)


def test_bfloat16_trunk(model_dir):
  config = make_config(model_dir, **{"agent.backbone_dtype": "bfloat16"})
  agent = policy.build_agent(config, 513, "sqr")
  params = policy.init_agent(agent, config, jax.random.key(0))
  assert params["trunk"]["pretrained"]["q"].dtype == jnp.bfloat16
  tokens, frames, nf = inputs(config)
  ef, qv = engine_view(config, frames)
  out = jax.jit(lambda p: agent.apply({"params": p}, tokens, frames, nf, num_latents=N,
                                      mode="greedy", sigma=0.05, engine_frames=ef,
                                      query_vec=qv, method=Agent.act))(params)
  assert out["mean"].dtype == jnp.float32 and bool(jnp.isfinite(out["verify"]).all())


def test_fsdp_splits_every_decoder_weight(lora):
  """The scale issue's 'fsdp' rule over a model axis of 4: every layer stack and the embedding
  table of the trunk are split along one of their dimensions (norm vectors are too small)."""
  from vsr_jax import sharding

  class FakeMesh:
    shape = {"data": 1, "corpus": 1, "model": 4}

  _, _, params = lora
  for name, w in params["trunk"]["pretrained"].items():
    spec = sharding.param_spec(w.shape, FakeMesh(), "fsdp")
    if "norm" in name:
      assert spec == sharding.P(), name
    else:
      assert "model" in tuple(spec), (name, w.shape, spec)


def test_refine_words_with_the_tied_output_layer(model_dir):
  """agent.refine_words: SQR's projector reads the word bag; HQR's output layer the state."""
  config = make_config(model_dir, **{"agent.refine_words": True})
  for refine in ("sqr", "hqr"):
    agent = policy.build_agent(config, 513, refine)
    params = policy.init_agent(agent, config, jax.random.key(0))
    assert params["refine_in"]["kernel"].shape[0] == 128 or refine == "hqr"


def test_engine_and_agent_must_share_a_tokenizer(model_dir, tmp_path):
  import json
  from vsr_jax import registry
  other = tiny_qwen3.make(str(tmp_path / "other"), vocab=400)
  config = make_config(model_dir, **{"agent.backbone_dir": other})
  with pytest.raises(config_lib.ConfigError, match="vocab_size 400, the engine's .* 512: the "
                                                   "agent and the engine must share"):
    registry.AGENT_BACKBONES.get("qwen3").check(config)
  import shutil
  same_size = tmp_path / "same"
  shutil.copytree(model_dir, same_size)
  tok = json.loads((same_size / "tokenizer.json").read_text())
  vocab = tok["model"]["vocab"]
  a, b = sorted(vocab)[100:102]
  vocab[a], vocab[b] = vocab[b], vocab[a]     # same size, two ids swapped
  (same_size / "tokenizer.json").write_text(json.dumps(tok, indent=1))
  config = make_config(model_dir, **{"agent.backbone_dir": str(same_size)})
  with pytest.raises(config_lib.ConfigError, match="tokenizer.json differs from the engine's"):
    registry.AGENT_BACKBONES.get("qwen3").check(config)


def test_hqr_needs_a_tied_checkpoint(model_dir, tmp_path):
  import json
  import shutil
  from vsr_jax import registry
  untied = tmp_path / "untied"
  shutil.copytree(model_dir, untied)
  cfg = json.loads((untied / "config.json").read_text())
  cfg["tie_word_embeddings"] = False
  (untied / "config.json").write_text(json.dumps(cfg))
  config = make_config(str(untied))
  with pytest.raises(config_lib.ConfigError, match="tie_word_embeddings is false"):
    registry.AGENT_BACKBONES.get("qwen3").check(config)
  config = make_config(str(untied), stages="('engine', 'sft', 'grpo')")
  registry.AGENT_BACKBONES.get("qwen3").check(config)   # SQR only: fine
