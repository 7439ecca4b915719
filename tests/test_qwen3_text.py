"""Tests for vsr_jax.engine.qwen3_text: the Qwen3 embedding model's text path as the engine's
text tower (template, last-token pooling, soft tokens before the template's final tokens),
its tokenizer, frozen-ness, and bad model directories.

Agreement with the reference implementation: tests/test_qwen3.py (golden fixtures).
"""

import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vsr_jax import config_lib, defaults
from vsr_jax.engine import qwen3_text, towers
from vsr_jax.models import qwen3

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))
import tiny_qwen3  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return tiny_qwen3.make(str(tmp_path_factory.mktemp("tiny") / "qwen3"))


def qwen3_config(directory):
  c = config_lib.set_values(defaults.base_config(), {
      "engine.text.kind": "qwen3", "engine.text.width": 64,
      "engine.text.pretrained_dir": directory, "engine.text.num_slots": 4,
      "data.max_query_len": 12, "agent.num_latents": 2, "data.feature_dim": 8,
      "data.max_frames": 16, "engine.embed_dim": 32})
  defaults.validate(c)
  return c


@pytest.fixture(scope="module")
def setup(model_dir):
  config = qwen3_config(model_dir)
  tok = qwen3_text.tokenizer_for(config)
  engine = towers.build_engine(config, len(tok))
  params = towers.init_engine(engine, config, jax.random.key(0))
  return config, tok, engine, params


def _apply(engine, params, method, *args):
  # Jitted: eager, the decoder runs op by op (seconds per call).
  return jax.jit(lambda p, *a: engine.apply({"params": p}, *a, method=method))(params, *args)


def test_template_and_tokenizer(setup):
  config, tok, engine, _ = setup
  t = engine.text
  raw = tok._tok   # the library's own encoding of the whole template
  head, tail = qwen3_text.split_template(config.engine.text.template,
                                         config.engine.text.instruction)
  assert t.head_ids == tuple(raw.encode(head, add_special_tokens=False).ids)
  assert t.tail_ids == tuple(raw.encode(tail, add_special_tokens=False).ids)
  assert raw.id_to_token(t.tail_ids[-1]) == "<|endoftext|>"
  ids, _, _ = tok.encode(["a man opens the door"], 12)
  want = raw.encode("a man opens the door", add_special_tokens=False).ids
  np.testing.assert_array_equal(ids[0, :len(want)], np.asarray(want) + 1)   # shifted by one
  assert (ids[0, len(want):] == 0).all() and len(tok) == engine.text.vocab_size


def test_pooled_is_the_last_token_of_the_whole_template(setup):
  """The tower's sequence equals the template text tokenised whole, run through the decoder."""
  config, tok, engine, params = setup
  text = "a woman holds a red cup"
  ids, _, _ = tok.encode([text], 12)
  whole = config.engine.text.template.format(instruction=config.engine.text.instruction,
                                             query=text)
  seq = jnp.asarray([tok._tok.encode(whole, add_special_tokens=False).ids])
  cfg = engine.text.arch
  model = qwen3.Qwen3(cfg)
  w = {"params": params["text"]["pretrained"]}
  x = model.apply(w, seq, method=qwen3.Qwen3.embed)
  T = seq.shape[1]
  hidden, _ = model.apply(w, x, jnp.arange(T)[None], qwen3.causal_mask(1, T))
  got = _apply(engine, params, towers.DualEncoder.text_pooled, jnp.asarray(ids))
  np.testing.assert_allclose(got[0], hidden[0, -1], atol=1e-5)


def test_soft_tokens(setup):
  config, tok, engine, params = setup
  ids, _, _ = tok.encode(["a man opens the door", "a girl"], 12)
  ids = jnp.asarray(ids)
  base = _apply(engine, params, towers.DualEncoder.encode_text, ids)
  soft = jax.random.normal(jax.random.key(1), (2, 2, 64))
  moved = _apply(engine, params, towers.DualEncoder.encode_text, ids, soft)
  assert float(jnp.abs(moved - base).max()) > 1e-3
  # Inserted tokens are attended: even zeros move the vector (the reference inserts them).
  zeros = _apply(engine, params, towers.DualEncoder.encode_text, ids, jnp.zeros((2, 2, 64)))
  assert float(jnp.abs(zeros - base).max()) > 1e-4
  # Holes in the tokens (dropped words) are packed: same vector as the packed query.
  holes = ids.at[0, 1].set(0)
  packed = jnp.concatenate([holes[:, :1], holes[:, 2:], jnp.zeros((2, 1), ids.dtype)], 1)
  a = _apply(engine, params, towers.DualEncoder.encode_text, holes, soft)
  b = _apply(engine, params, towers.DualEncoder.encode_text, packed, soft)
  np.testing.assert_allclose(a[0], b[0], atol=1e-5)   # row 0 has the hole
  with pytest.raises(ValueError, match="at most 4"):
    _apply(engine, params, towers.DualEncoder.encode_text, ids, jnp.zeros((2, 5, 64)))
  # Gradients reach the soft tokens, none reach the frozen weights.
  g_soft, g_params = jax.jit(jax.grad(lambda s, p: engine.apply(
      {"params": p}, ids, s, method=towers.DualEncoder.encode_text).sum(),
      argnums=(0, 1)))(soft, params)
  assert float(jnp.abs(g_soft).max()) > 0
  assert all(float(jnp.abs(v).max()) == 0
             for v in jax.tree.leaves(g_params["text"]["pretrained"]))


def test_frozen_by_the_optimizer(setup):
  _, _, _, params = setup
  tx = towers.freeze(optax.adamw(1e-2, weight_decay=0.5), params)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  assert all(float(jnp.abs(u).max()) == 0
             for u in jax.tree.leaves(updates["text"]["pretrained"]))
  assert float(jnp.abs(updates["text"]["proj"]["kernel"]).max()) > 0


def test_loaded_weights_are_the_files(setup, model_dir):
  from safetensors.numpy import load_file
  _, _, _, params = setup
  raw = load_file(os.path.join(model_dir, "model.safetensors"))
  w = params["text"]["pretrained"]
  np.testing.assert_array_equal(w["embed"], raw["model.embed_tokens.weight"])
  np.testing.assert_array_equal(w["q"][1], raw["model.layers.1.self_attn.q_proj.weight"].T)


def test_query_cache_fingerprint(setup):
  from vsr_jax.engine import query_cache
  _, _, engine, params = setup
  a = query_cache.fingerprint(engine, params["text"])
  other = engine.clone(text=engine.text.clone(tail_ids=engine.text.tail_ids[:-1]))
  assert query_cache.fingerprint(other, params["text"]) != a


def test_width_must_match(model_dir):
  c = qwen3_config(model_dir)
  c.engine.text.width = 32
  with pytest.raises(config_lib.ConfigError, match="expected 64, the hidden size"):
    qwen3_text.tokenizer_for(c)


def test_template_needs_one_query_and_a_tail(model_dir):
  c = qwen3_config(model_dir)
  c.engine.text.template = "{instruction} {query}"
  with pytest.raises(config_lib.ConfigError, match="final tokens after the query"):
    qwen3_text.tokenizer_for(c)
  c.engine.text.template = "no placeholder"
  with pytest.raises(config_lib.ConfigError, match="exactly one {query}"):
    qwen3_text.tokenizer_for(c)


def test_no_model_dir():
  c = defaults.base_config()
  c.engine.text.kind = "qwen3"
  with pytest.raises(config_lib.ConfigError, match="config.engine.text.pretrained_dir is .*: expected a local directory"):
    qwen3_text.tokenizer_for(c)


def test_tokenizer_missing(model_dir, tmp_path):
  d = tmp_path / "m"
  shutil.copytree(model_dir, d)
  os.remove(d / "tokenizer.json")
  with pytest.raises(qwen3.Qwen3Error, match="missing tokenizer.json"):
    qwen3_text.tokenizer_for(qwen3_config(str(d)))


def test_tokenizer_larger_than_the_model(model_dir):
  with pytest.raises(qwen3.Qwen3Error, match="tokenizer.json has 512 tokens but config.json "
                                             "says vocab_size 100"):
    qwen3_text.Qwen3Tokenizer(model_dir, 100)


def test_tiny_model_is_reused_or_refused(model_dir):
  assert tiny_qwen3.make(model_dir) == model_dir
  with pytest.raises(SystemExit, match="was not made by tiny_qwen3.py"):
    tiny_qwen3.make(model_dir, hidden=32)
