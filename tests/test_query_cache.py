"""Tests for vsr_jax.engine.query_cache: the frozen MiniLM tower's pooled query encodings,
cached once per split in the workdir, give exactly the engine's query vectors, mining's hard
negatives and stage 0's steps (and a stage-0 step on captions cut to the batch's longest is the
full-width step); a cache of another tower is refused, one of other tokens is remade."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vsr_jax import defaults
from vsr_jax.data import batching
from vsr_jax.engine import pretrained, query_cache, towers
from vsr_jax.engine.towers import DualEncoder
from vsr_jax.stages import engine as engine_stage


def minilm_config():
  c = defaults.base_config()
  c.engine.text.kind, c.engine.text.width = "minilm", 384
  c.engine.text.num_slots, c.data.max_query_len, c.agent.num_latents = 4, 24, 0
  c.data.feature_dim, c.data.max_frames, c.engine.embed_dim = 8, 16, 32
  defaults.validate(c)
  return c


@pytest.fixture(scope="module")
def setup():
  config = minilm_config()
  tok = pretrained.tokenizer_for(config)
  engine = towers.build_engine(config, len(tok))
  params = towers.init_engine(engine, config, jax.random.key(0))
  texts = ["a person opens the fridge in a small kitchen", "someone laughs at the phone",
           "the man in a red shirt sits on a sofa", "a woman pours water into a glass",
           "a dog runs", "two people walk out of the room holding a blue towel"]
  tokens, _, _ = tok.encode(texts, config.data.max_query_len)
  return config, engine, params, tokens


def test_pooled_then_projected_is_the_query_vector(setup):
  _, engine, params, tokens = setup
  want = engine.apply({"params": params}, tokens, method=DualEncoder.encode_text)
  pooled = engine.apply({"params": params}, tokens, method=DualEncoder.text_pooled)
  got = query_cache.project(engine, params, pooled)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  assert query_cache.frozen_text(engine)


def test_cached_once_then_read(setup, tmp_path):
  _, engine, params, tokens = setup
  first = query_cache.pooled_queries(engine, params, tokens, str(tmp_path), "train")
  path = tmp_path / "cache" / "queries" / "train.npy"
  stamp = path.stat().st_mtime_ns
  again = query_cache.pooled_queries(engine, params, tokens, str(tmp_path), "train")
  np.testing.assert_array_equal(first, again)
  assert path.stat().st_mtime_ns == stamp          # read, not written again
  direct = engine.apply({"params": params}, tokens, method=DualEncoder.text_pooled)
  np.testing.assert_allclose(first, np.asarray(direct), atol=1e-6)
  # Other tokens (the data changed): encoded again, the file replaced.
  fewer = query_cache.pooled_queries(engine, params, tokens[:3], str(tmp_path), "train")
  assert fewer.shape == (3, 384) and np.load(path).shape == (3, 384)
  assert not [p for p in os.listdir(path.parent) if ".tmp-" in p]


def test_another_towers_cache_is_refused(setup, tmp_path):
  _, engine, params, tokens = setup
  query_cache.pooled_queries(engine, params, tokens, str(tmp_path), "train")
  meta = tmp_path / "cache" / "queries" / "train.json"
  data = json.loads(meta.read_text())
  mine = data["tower"]
  data["tower"] = "0123456789abcdef"
  meta.write_text(json.dumps(data))
  with pytest.raises(query_cache.QueryCacheError,
                     match=rf"train.npy: query encodings of another text tower \(fingerprint "
                           rf"0123456789abcdef, this run's {mine}\)"):
    query_cache.pooled_queries(engine, params, tokens, str(tmp_path), "train")


def test_fingerprint_follows_the_frozen_weights(setup):
  _, engine, params, _ = setup
  text = params["text"]
  fp = query_cache.fingerprint(engine, text)
  frozen = dict(text[towers.FROZEN])
  name = sorted(frozen)[0]
  frozen[name] = jax.tree.map(lambda x: x + 1e-3, frozen[name])
  assert query_cache.fingerprint(engine, dict(text, **{towers.FROZEN: frozen})) != fp
  trained = dict(text, proj=jax.tree.map(lambda x: x + 1.0, text["proj"]))
  assert query_cache.fingerprint(engine, trained) == fp     # the trained part is not in it


def test_mining_from_the_cache_equals_mining_from_tokens(setup, tmp_path):
  """Stage 0's mining with the cached pooled queries gives the same hard negatives as encoding
  every query again."""
  config, engine, params, tokens = setup
  rng = np.random.default_rng(0)
  V = 5
  split = type("S", (), {})()
  split.features = rng.standard_normal((V, 16, 8)).astype(np.float32)
  split.num_frames = np.full(V, 16, np.int32)
  split.tokens = tokens
  split.video_index = np.array([0, 1, 2, 3, 4, 0], np.int32)
  split.num_videos = V
  pooled = query_cache.pooled_queries(engine, params, tokens, str(tmp_path), "train")
  want = engine_stage.mine_hard_negatives(engine, params, split, 3, 4)
  got = engine_stage.mine_hard_negatives(engine, params, split, 3, 4, pooled=pooled)
  np.testing.assert_array_equal(got, want)


def test_encoded_by_length_is_encoded_at_full_width(setup):
  """Rows encoded shortest first in batches cut to their longest give the full-width
  encodings, each in its row."""
  _, engine, params, tokens = setup
  want = engine.apply({"params": params}, tokens, method=DualEncoder.text_pooled)
  got = query_cache.encode_pooled(engine, params, tokens, "test")
  assert (tokens != batching.PAD).sum(1).max() <= 16 < tokens.shape[1]   # a real cut
  np.testing.assert_allclose(got, np.asarray(want), atol=2e-5)


def stage0(setup, tmp_path, fine_keep: float, fine=None, variants: int = 0):
  """Stage 0's loop over a 6-caption train split (the train source, the frozen tower) and the
  batch of its first step."""
  import types   # pylint: disable=g-import-not-at-top
  config, engine, _, tokens = setup
  config = config.copy_and_resolve_references()
  config.engine.train.source, config.engine.train.batch_size = "train", 4
  config.engine.train.hard_negatives, config.engine.train.fine_keep = 1, fine_keep
  config.engine.train.caption_variants = variants
  rng = np.random.default_rng(0)
  split = types.SimpleNamespace(
      features=rng.standard_normal((5, 16, 8)).astype(np.float32),
      num_frames=np.full(5, 16, np.int32), tokens=tokens,
      fine=np.zeros(tokens.shape, bool) if fine is None else fine,
      video_index=np.array([0, 1, 2, 3, 4, 0], np.int32), num_videos=5, num_queries=6)
  ctx = types.SimpleNamespace(config=config, engine=engine, splits={"train": split},
                              tokenizer=None, cache={}, workdir=str(tmp_path))
  loop = engine_stage.EngineStage().loop(ctx)
  full = batching.engine_batch(split, 0, seed=config.seed, batch_size=4, fine_keep=fine_keep,
                               hard_pool=None, hard_negatives=1)
  return loop, loop.batch_fn(0, loop.state), full["tokens"]


def assert_same_step(loop, batch, want):
  """One step from each batch, from the same state: the same loss and weights."""
  copy = lambda s: jax.tree.map(jnp.array, s)
  got_state, got = loop.step_fn(copy(loop.state), batch, None)
  want_state, wanted = loop.step_fn(copy(loop.state), want, None)
  np.testing.assert_allclose(got["loss"], wanted["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               got_state.params, want_state.params)


def test_stage0_steps_from_the_cache_equal_steps_from_tokens(setup, tmp_path):
  """Stage 0 over the train split with the frozen tower: its batches carry the captions'
  cached encodings instead of tokens, and a step from them (the projection only) gives the
  loss and the weights a step from the tokens gives (the same mined negatives)."""
  loop, batch, tokens = stage0(setup, tmp_path, 1.0)
  assert "pooled" in batch and "tokens" not in batch
  want = {k: v for k, v in batch.items() if k != "pooled"}
  assert_same_step(loop, batch, dict(want, tokens=tokens))


def test_stage0_cuts_a_frozen_towers_captions_and_steps_as_at_full_width(setup, tmp_path):
  """With fine tokens dropped (no cache), stage 0's captions for the frozen tower are cut to
  the batch's longest, rounded up to TOKEN_MULTIPLE; the step equals the full-width step."""
  tokens = setup[3]
  fine = np.zeros(tokens.shape, bool)
  fine[:, 1:] = tokens[:, 1:] != batching.PAD       # all but the first piece may be dropped
  loop, batch, full = stage0(setup, tmp_path, 0.2, fine)
  assert "pooled" not in batch
  assert batch["tokens"].shape[1] == engine_stage.TOKEN_MULTIPLE < full.shape[1]
  assert full.shape[1] == tokens.shape[1]
  assert_same_step(loop, batch, dict(batch, tokens=full))


def test_stage0_caption_variants_are_drawn_and_encoded_once(setup, tmp_path):
  """caption_variants=2 with fine tokens dropped: each caption's 2 draws are encoded once
  (cached in the workdir, read by the next run) and every row of a batch is the encoding of
  one draw of its caption (both draws used over a few batches)."""
  config, engine, params, tokens = setup
  fine = np.zeros(tokens.shape, bool)
  fine[:, 1:] = tokens[:, 1:] != batching.PAD
  loop, batch, _ = stage0(setup, tmp_path, 0.2, fine, variants=2)
  draws = [batching.drop_fine_tokens(tokens, fine, 0.2,
                                     np.random.default_rng([config.seed, 23, k]))
           for k in range(2)]
  assert not np.array_equal(draws[0], draws[1])
  want = np.stack([engine.apply({"params": params}, d, method=DualEncoder.text_pooled)
                   for d in draws])                                     # [2, Q, hidden]
  files = sorted(os.listdir(tmp_path / "cache" / "queries"))
  # (train.*: the whole captions, which mining reads)
  assert files == ["train.captions0.json", "train.captions0.npy", "train.captions1.json",
                   "train.captions1.npy", "train.json", "train.npy"]
  stamps = [(tmp_path / "cache" / "queries" / f).stat().st_mtime_ns for f in files]
  rows = [loop.batch_fn(step, loop.state)["pooled"] for step in range(4)]
  assert "tokens" not in batch and batch["pooled"].shape == (4, want.shape[2])
  used = set()
  for got in [batch["pooled"]] + rows:
    for row in got:
      dist = np.abs(want - row).max(-1)                                 # [2, Q]
      k, _ = np.unravel_index(dist.argmin(), dist.shape)
      assert dist.min() < 2e-5
      used.add(int(k))
  assert used == {0, 1}
  stage0(setup, tmp_path, 0.2, fine, variants=2)                        # a second run reads them
  assert [(tmp_path / "cache" / "queries" / f).stat().st_mtime_ns for f in files] == stamps


def test_evaluation_reads_the_runs_cache_and_never_writes_it(setup, tmp_path, monkeypatch):
  """evaluate.split_queries on a frozen tower: the run's cache of the whole split when there
  is one (also for the first queries only, eval.max_queries), else encoded by length; the
  engine's query vectors either way, and no cache file written by evaluation."""
  import types   # pylint: disable=g-import-not-at-top
  from vsr_jax import evaluate   # pylint: disable=g-import-not-at-top
  config, engine, params, tokens = setup
  whole = types.SimpleNamespace(name="test", tokens=tokens, num_queries=len(tokens))
  first = types.SimpleNamespace(name="test", tokens=tokens[:4], num_queries=4)
  want = np.asarray(engine.apply({"params": params}, tokens, method=DualEncoder.encode_text))
  ctx = lambda: types.SimpleNamespace(config=config, engine=engine, splits={"test": whole},
                                      workdir=str(tmp_path), cache={},
                                      stage_params=lambda stage: params)
  got = evaluate.split_queries(ctx(), first)                   # no cache: encoded
  np.testing.assert_allclose(got, want[:4], atol=1e-5)
  assert not (tmp_path / "cache").exists()
  query_cache.pooled_queries(engine, params, tokens, str(tmp_path), "test")
  def refuse(*args, **kwargs):
    raise AssertionError("encoded although the run's cache holds the split")
  monkeypatch.setattr(query_cache, "encode_pooled", refuse)
  for split in (whole, first):
    got = evaluate.split_queries(ctx(), split)
    np.testing.assert_allclose(got, want[:split.num_queries], atol=1e-5)
