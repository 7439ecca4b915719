"""The Flax Qwen3 decoder against the reference implementation, and its loader's errors.

Golden fixtures: tests/fixtures/qwen3/ (small random Qwen3 and Qwen3-VL models and their
outputs under transformers 5.23 / PyTorch 2.13, made by tests/fixtures/qwen3_reference.py).
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vsr_jax.engine import qwen3_text
from vsr_jax.models import qwen3

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "qwen3")
MODELS = ("qwen3", "qwen3_vl")
# Stated agreement: float32 on CPU against PyTorch's float32.
MIN_COSINE, MAX_ABS = 0.9999, 1e-5


def _cosine(a, b):
  a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
  return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _load(name):
  directory = os.path.join(FIXTURES, name)
  cfg = qwen3.Qwen3Config.load(directory)
  return directory, cfg, qwen3.load_weights(directory, cfg), dict(
      np.load(os.path.join(directory, "reference.npz")))


def agreement(name):
  """(cosine min, max abs error) of hidden states, pooled, pooled with soft tokens."""
  directory, cfg, weights, ref = _load(name)
  ids = jnp.asarray(ref["ids"])
  B, T = ids.shape
  model = qwen3.Qwen3(cfg)
  params = {"params": weights}
  x = model.apply(params, ids, method=qwen3.Qwen3.embed)
  pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  hidden, _ = jax.jit(lambda p, x: model.apply(p, x, pos, qwen3.causal_mask(B, T)))(params, x)
  hidden = np.asarray(hidden)
  # Soft tokens through the engine's tower: head = all but the last K ids, tail = the last K.
  K = int(ref["tail"])
  tower = qwen3_text.Qwen3TextTower(arch=cfg, model_dir=directory, max_len=4, num_slots=8,
                                    embed_dim=cfg.hidden, head_ids=(), tail_ids=())
  out = {}
  for b in range(B):
    row = [int(i) for i in ref["ids"][b]]
    t = tower.clone(head_ids=tuple(row[:2]), tail_ids=tuple(row[-K:]), max_len=T - 2 - K)
    tokens = jnp.asarray([row[2:-K]]) + 1   # pipeline ids: Qwen id + 1
    soft = jnp.asarray(ref["soft"][b:b + 1])
    tp = {"params": {"pretrained": weights, "proj": {"kernel": jnp.eye(cfg.hidden),
                                                     "bias": jnp.zeros(cfg.hidden)}}}
    enc = jax.jit(lambda p, tk, s: t.apply(p, tk, s, method=t._encode))
    out.setdefault("pooled", []).append(np.asarray(enc(tp, tokens, None))[0])
    out.setdefault("pooled_soft", []).append(np.asarray(enc(tp, tokens, soft))[0])
  result = {"hidden": hidden}
  result.update({k: np.stack(v) for k, v in out.items()})
  return {k: (float(_cosine(v, ref[k]).min()), float(np.abs(v - ref[k]).max()))
          for k, v in result.items()}


@pytest.mark.parametrize("name", MODELS)
def test_matches_reference(name):
  for what, (cos, err) in agreement(name).items():
    assert cos >= MIN_COSINE, (name, what, cos)
    assert err <= MAX_ABS, (name, what, err)


def test_soft_tokens_change_the_vector():
  """A check that the soft-token comparison can fail: the reference moved with them."""
  ref = np.load(os.path.join(FIXTURES, "qwen3", "reference.npz"))
  assert _cosine(ref["pooled"], ref["pooled_soft"]).max() < 0.99


def test_config_reads_both_layouts():
  a = qwen3.Qwen3Config.load(os.path.join(FIXTURES, "qwen3"))
  b = qwen3.Qwen3Config.load(os.path.join(FIXTURES, "qwen3_vl"))
  assert (a.hidden, a.layers, a.heads, a.kv_heads, a.head_dim) == (64, 2, 4, 2, 16)
  assert b.architecture == "Qwen3VLForConditionalGeneration" and b.rope_theta == 5e6
  for name in MODELS:   # the count experiments/qwen3_sizes.py reports = the reference's
    _, cfg, weights, ref = _load(name)
    assert cfg.num_params() == sum(w.size for w in weights.values()) == int(ref["num_params"])


def _copy(tmp_path, name="qwen3_vl"):
  d = tmp_path / name
  shutil.copytree(os.path.join(FIXTURES, name), d)
  return d


def test_missing_shard(tmp_path):
  d = _copy(tmp_path)
  os.remove(d / "model-00003-of-00006.safetensors")
  with pytest.raises(qwen3.Qwen3Error, match="model-00003-of-00006.safetensors"):
    qwen3.check_weights(str(d), qwen3.Qwen3Config.load(str(d)))


def test_no_weights(tmp_path):
  d = _copy(tmp_path, "qwen3")
  os.remove(d / "model.safetensors")
  with pytest.raises(qwen3.Qwen3Error, match="no model.safetensors"):
    qwen3.check_weights(str(d), qwen3.Qwen3Config.load(str(d)))


def _edit_config(d, **text):
  raw = json.loads((d / "config.json").read_text())
  target = raw.get("text_config", raw)
  target.update(text)
  (d / "config.json").write_text(json.dumps(raw))


def test_shape_disagrees_with_config(tmp_path):
  d = _copy(tmp_path, "qwen3")
  _edit_config(d, intermediate_size=128)
  with pytest.raises(qwen3.Qwen3Error, match=r"model.safetensors: tensor 'model.layers.0.mlp."
                     r"(gate|up|down)_proj.weight' has shape"):
    qwen3.check_weights(str(d), qwen3.Qwen3Config.load(str(d)))


def test_more_layers_than_weights(tmp_path):
  d = _copy(tmp_path, "qwen3")
  _edit_config(d, num_hidden_layers=3)
  with pytest.raises(qwen3.Qwen3Error, match="missing tensor 'model.layers.2"):
    qwen3.check_weights(str(d), qwen3.Qwen3Config.load(str(d)))


def test_unknown_architecture(tmp_path):
  d = _copy(tmp_path, "qwen3")
  raw = json.loads((d / "config.json").read_text())
  raw["architectures"] = ["LlamaForCausalLM"]
  (d / "config.json").write_text(json.dumps(raw))
  with pytest.raises(qwen3.Qwen3Error, match=r"config.json: architectures \['LlamaForCausalLM'"
                                             r"\]: expected one of Qwen3ForCausalLM"):
    qwen3.Qwen3Config.load(str(d))


def test_unsupported_rope_and_sliding_window(tmp_path):
  d = _copy(tmp_path, "qwen3")
  _edit_config(d, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0})
  with pytest.raises(qwen3.Qwen3Error, match="rope type 'yarn'"):
    qwen3.Qwen3Config.load(str(d))
  _edit_config(d, rope_parameters={"rope_type": "default", "rope_theta": 1e4},
               use_sliding_window=True)
  with pytest.raises(qwen3.Qwen3Error, match="use_sliding_window"):
    qwen3.Qwen3Config.load(str(d))


def test_missing_config(tmp_path):
  with pytest.raises(qwen3.Qwen3Error, match="missing config.json"):
    qwen3.Qwen3Config.load(str(tmp_path))


def test_bfloat16_load_and_forward():
  directory, cfg, _, ref = _load("qwen3")
  weights = qwen3.load_weights(directory, cfg, jnp.bfloat16)
  assert weights["q"].dtype == jnp.bfloat16
  ids = jnp.asarray(ref["ids"])
  B, T = ids.shape
  model = qwen3.Qwen3(cfg, dtype="bfloat16")
  x = model.apply({"params": weights}, ids, method=qwen3.Qwen3.embed)
  hidden, _ = model.apply({"params": weights}, x, jnp.broadcast_to(jnp.arange(T), (B, T)),
                          qwen3.causal_mask(B, T))
  assert hidden.dtype == jnp.bfloat16
  assert _cosine(np.asarray(hidden, np.float32), ref["hidden"]).min() > 0.99


def _inputs(name="qwen3"):
  """(cfg, model, variables, input embeddings x [B, T, H], positions [B, T]) of a fixture."""
  _, cfg, weights, ref = _load(name)
  ids = jnp.asarray(ref["ids"])
  B, T = ids.shape
  model, p = qwen3.Qwen3(cfg), {"params": weights}
  x = model.apply(p, ids, method=qwen3.Qwen3.embed)
  return cfg, model, p, x, jnp.broadcast_to(jnp.arange(T), (B, T))


def test_kv_cache_equals_full_pass():
  """Decoding the last positions against a cache of the first equals one full pass."""
  _, model, p, x, pos = _inputs()
  B, T = pos.shape
  full, _ = model.apply(p, x, pos, qwen3.causal_mask(B, T))
  h1, cache = model.apply(p, x[:, :8], pos[:, :8], qwen3.causal_mask(B, 8))
  mask = jnp.broadcast_to(jnp.arange(T)[None, :] <= jnp.arange(8, T)[:, None], (B, T - 8, T))
  h2, _ = model.apply(p, x[:, 8:], pos[:, 8:], mask, past=cache)
  np.testing.assert_allclose(np.concatenate([h1, h2], 1), full, atol=1e-5)


def test_lora_starts_as_the_loaded_model():
  cfg, model, p, x, pos = _inputs()
  B, T = pos.shape
  lora = qwen3.Lora(cfg, rank=4)
  adapters, scale = lora.apply(lora.init(jax.random.key(0)))
  plain, _ = model.apply(p, x, pos, qwen3.causal_mask(B, T))
  adapted, _ = model.apply(p, x, pos, qwen3.causal_mask(B, T), lora=adapters, lora_scale=scale)
  np.testing.assert_allclose(adapted, plain, atol=1e-6)
  moved = jax.tree.map(lambda a: a + 0.05, adapters)
  other, _ = model.apply(p, x, pos, qwen3.causal_mask(B, T), lora=moved, lora_scale=scale)
  assert np.abs(np.asarray(other) - np.asarray(plain)).max() > 1e-3
