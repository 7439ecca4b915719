"""Tests for vsr_jax.engine.pretrained: the Flax all-MiniLM-L6-v2 against reference
embeddings, the soft-token hook, frozen-ness, the tokenizer, and bad model directories.

The reference (tests/fixtures/minilm_reference.npy) was computed once with
sentence-transformers 6.2.0 on PyTorch 2.13.0 (CPU) from the installed package's model
directory; tests/fixtures/minilm_reference.py holds the sentences and the command that
regenerates it (in a throwaway virtualenv: the project never needs PyTorch).
"""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vsr_jax import config_lib, defaults
from vsr_jax.engine import pretrained, towers
from vsr_jax.engine.towers import DualEncoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
L, SLOTS = 40, 4


def reference_sentences():
  spec = importlib.util.spec_from_file_location(
      "minilm_reference_src", os.path.join(FIXTURES, "minilm_reference.py"))
  source = open(spec.origin, encoding="utf-8").read()
  # Only the sentence list: the script itself imports sentence_transformers.
  namespace = {}
  exec(source[source.index("SENTENCES = ["):source.index("\n\n\ndef main")], namespace)
  return namespace["SENTENCES"]


def minilm_config(**fields):
  c = defaults.base_config()
  c.engine.text.kind, c.engine.text.width = "minilm", 384
  c.engine.text.num_slots, c.data.max_query_len, c.agent.num_latents = SLOTS, L, 0
  c.data.feature_dim, c.data.max_frames, c.engine.embed_dim = 8, 16, 32
  for key, value in fields.items():
    section, leaf = key.rsplit(".", 1)
    node = c
    for part in section.split("."):
      node = node[part]
    node[leaf] = value
  defaults.validate(c)
  return c


@pytest.fixture(scope="module")
def setup():
  directory = pretrained.model_dir("")
  config = minilm_config()
  tok = pretrained.tokenizer_for(config)
  engine = towers.build_engine(config, len(tok))
  params = towers.init_engine(engine, config, jax.random.key(0))
  return directory, config, tok, engine, params


def test_matches_the_reference_implementation(setup):
  directory, config, tok, engine, params = setup
  sentences = reference_sentences()
  ids, _, cut = tok.encode(sentences, L)
  assert cut == 0
  # No slots: exactly the sentence-transformers input and pooling.
  plain = pretrained.build_tower(minilm_config(**{"engine.text.num_slots": 0}), directory)
  got = plain.apply({"params": params["text"]}, jnp.asarray(ids),
                    method=pretrained.PretrainedTextTower.sentence_embedding)
  want = np.load(os.path.join(FIXTURES, "minilm_reference.npy"))
  assert want.shape == (len(sentences), 384)
  cosine = np.sum(np.asarray(got) * want, -1) / np.linalg.norm(want, axis=-1)
  assert cosine.min() >= 0.9999, cosine
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, rtol=1e-5)


def test_tower_input_is_the_standard_encoding(setup):
  """[CLS] pieces [SEP]: what tokenizer.json's own template gives."""
  directory, _, tok, _, _ = setup
  import tokenizers
  standard = tokenizers.Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
  standard.no_padding()
  ids, _, _ = tok.encode(reference_sentences(), L)
  for row, text in zip(ids, reference_sentences()):
    pieces = [int(i) for i in row if i != 0]
    assert [tok.cls_id] + pieces + [tok.sep_id] == standard.encode(text).ids


def test_loaded_weights_are_the_files(setup):
  directory, _, _, _, params = setup
  from safetensors.numpy import load_file
  raw = load_file(os.path.join(directory, "model.safetensors"))
  bert = params["text"][towers.FROZEN]
  np.testing.assert_array_equal(bert["word_embeddings"], raw["embeddings.word_embeddings.weight"])
  np.testing.assert_array_equal(bert["in_kernel"][3],
                                raw["encoder.layer.3.intermediate.dense.weight"].T)


def encode(engine, params, tokens, soft=None):
  return _encode(engine, params, tokens, soft)


@jax.jit
def _jitted(params, tokens, soft):
  return _ENGINE[0].apply({"params": params}, tokens, soft, method=DualEncoder.encode_text)


_ENGINE = []


def _encode(engine, params, tokens, soft):
  # Jitted (an eager BERT runs op by op); one engine per test module.
  _ENGINE[:] = [engine]
  return _jitted(params, tokens, soft)


def test_soft_token_hook(setup):
  _, config, tok, engine, params = setup
  ids, _, _ = tok.encode(["a man opens the door", "two dogs run on a beach at dusk"], L)
  tokens = jnp.asarray(ids)
  base = encode(engine, params, tokens)
  assert base.shape == (2, config.engine.embed_dim)
  for n in (1, SLOTS):
    zero = jnp.zeros((2, n, 384))
    np.testing.assert_array_equal(encode(engine, params, tokens, zero), base)
  soft = jnp.zeros((2, SLOTS, 384)).at[0, 1].set(
      jax.random.normal(jax.random.key(1), (384,)))
  moved = encode(engine, params, tokens, soft)
  assert float(jnp.abs(moved[0] - base[0]).max()) > 1e-3         # flows through BERT
  np.testing.assert_allclose(moved[1], base[1], atol=1e-6)        # rows independent
  # Padding is outside the sequence: more of it changes nothing.
  short, _, _ = tok.encode(["a man opens the door"], 12)
  narrow = pretrained.build_tower(minilm_config(**{"data.max_query_len": 12}),
                                  pretrained.model_dir(""))
  np.testing.assert_allclose(
      jax.jit(narrow.apply)({"params": params["text"]}, jnp.asarray(short)), base[:1],
      atol=2e-6)
  # Holes (dropped pieces) are packed: the same as the packed caption.
  holes = np.zeros_like(ids[:1])
  holes[0, ::2][:len(short[0][short[0] != 0])] = short[0][short[0] != 0]
  np.testing.assert_allclose(encode(engine, params, jnp.asarray(np.repeat(holes, 2, 0)))[0],
                             base[0], atol=2e-6)
  with pytest.raises(ValueError, match="only 4 slots"):
    jax.eval_shape(lambda: engine.apply({"params": params}, tokens, jnp.zeros(
        (2, SLOTS + 1, 384)), method=DualEncoder.encode_text))


def test_frozen_in_every_stage(setup):
  _, config, tok, engine, params = setup
  ids, _, _ = tok.encode(["a man opens the door", "a dog runs"], L)
  tokens = jnp.asarray(ids)
  feats = jax.random.normal(jax.random.key(2), (2, 16, 8))
  nf = jnp.array([16, 4])

  def loss(p, soft):
    q = encode(engine, p, tokens, soft)
    v = engine.apply({"params": p}, feats, nf, method=DualEncoder.encode_video)
    return -jnp.sum(q * v)

  soft = 0.1 * jnp.ones((2, 2, 384))
  grads, soft_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, soft)
  bert_grads = jax.tree.leaves(grads["text"][towers.FROZEN])
  assert all(not np.any(np.asarray(g)) for g in bert_grads)       # stop_gradient
  assert np.any(np.asarray(grads["text"]["proj"]["kernel"]))      # the projection trains
  assert np.any(np.asarray(soft_grad))                            # soft tokens get gradients
  # Stage 0's optimizer with weight decay: the pretrained weights do not move at all.
  tx = towers.freeze(optax.adamw(1e-2, weight_decay=0.1), params)
  state = tx.init(params)
  new = params
  for _ in range(2):
    updates, state = tx.update(grads, state, new)
    new = optax.apply_updates(new, updates)
  for a, b in zip(jax.tree.leaves(params["text"][towers.FROZEN]),
                  jax.tree.leaves(new["text"][towers.FROZEN])):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(new["text"]["proj"]["kernel"], params["text"]["proj"]["kernel"])
  assert not np.array_equal(new["video"]["proj"]["kernel"], params["video"]["proj"]["kernel"])


def test_freeze_leaves_a_scratch_engine_alone():
  config = config_lib.load(os.path.join(REPO, "configs", "synthetic.py") + ":smoke")
  engine = towers.build_engine(config, 30)
  shapes = jax.eval_shape(lambda r: towers.init_engine(engine, config, r), jax.random.key(0))
  tx = optax.adam(1e-3)
  assert towers.freeze(tx, shapes) is tx


def test_word_vectors_are_embedding_rows(setup):
  _, _, tok, engine, params = setup
  ids = jnp.array([[tok.mask_id, 2000]])
  vec = engine.apply({"params": params}, ids, method=DualEncoder.word_vectors)
  np.testing.assert_array_equal(vec[0], params["text"][towers.FROZEN]["word_embeddings"][ids[0]])


def test_tokenizer_interface(setup):
  _, _, tok, _, _ = setup
  assert len(tok) == 30522
  ids, fine, cut = tok.encode(["A person in RED opens the door.", "x " * 50], 8,
                              fine_of=["a person opens the door", "x"])
  assert ids.shape == fine.shape == (2, 8) and ids.dtype == np.int32 and cut == 1
  words = [tok._tok.id_to_token(int(i)) for i in ids[0] if i != 0]
  assert words == ["a", "person", "in", "red", "opens", "the", "door", "."]
  assert fine[0].tolist() == [False, False, True, True, False, False, False, True]
  assert not fine[1].any()


def test_width_must_match_the_encoder():
  c = minilm_config()
  c.engine.text.width = 128
  with pytest.raises(config_lib.ConfigError, match="config.engine.text.width=128: expected 384"):
    pretrained.tokenizer_for(c)


@pytest.mark.parametrize("missing", pretrained.REQUIRED_FILES)
def test_model_dir_missing_a_file(tmp_path, missing):
  source = pretrained.model_dir("")
  for name in pretrained.REQUIRED_FILES:
    if name != missing:
      os.symlink(os.path.join(source, name), tmp_path / name)
  with pytest.raises(pretrained.PretrainedError, match=f"{tmp_path}: missing {missing}"):
    pretrained.model_dir(str(tmp_path))


def test_config_json_missing_a_key(tmp_path):
  raw = json.load(open(os.path.join(pretrained.model_dir(""), "config.json")))
  del raw["num_hidden_layers"]
  (tmp_path / "config.json").write_text(json.dumps(raw))
  with pytest.raises(pretrained.PretrainedError,
                     match="config.json: missing key 'num_hidden_layers'"):
    pretrained.BertConfig.load(str(tmp_path))


def test_safetensors_missing_a_tensor(tmp_path):
  from safetensors.numpy import save_file
  cfg = pretrained.BertConfig(vocab_size=10, hidden=4, layers=2, heads=2, intermediate=8,
                              max_positions=16, type_vocab=2, ln_eps=1e-12)
  tensors = {"embeddings.word_embeddings.weight": np.zeros((10, 4), np.float32),
             "embeddings.position_embeddings.weight": np.zeros((16, 4), np.float32),
             "embeddings.token_type_embeddings.weight": np.zeros((2, 4), np.float32),
             "embeddings.LayerNorm.weight": np.ones(4, np.float32),
             "embeddings.LayerNorm.bias": np.zeros(4, np.float32)}
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with pytest.raises(pretrained.PretrainedError,
                     match="model.safetensors: missing tensor 'encoder.layer.0.attention"):
    pretrained.load_weights(str(tmp_path), cfg)
  (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(pretrained.PretrainedError, match="unreadable safetensors"):
    pretrained.load_weights(str(tmp_path), cfg)
