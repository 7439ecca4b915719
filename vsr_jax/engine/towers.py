"""The search engine: a dual encoder (VideoTower, TextTower) that is frozen after stage 0.

TextTower ends every query with `num_slots` learned template slots (as embedding models end a
query with template tokens). Soft Query Refinement adds its N soft tokens onto the first N
slots, after the original query's token embeddings: zero soft tokens give exactly the
original query vector, so a freshly initialised refiner changes nothing, while any non-zero
soft token flows through the whole frozen transformer (the word positions attend to the
slots, and the word positions are pooled).
engine/pretrained.py gives a frozen pretrained TextTower with the same contract
(engine.text.kind='minilm'); `freeze` keeps its weights out of every optimizer update.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vsr_jax import config_lib, registry
from vsr_jax.data.tokenizer import PAD

# The params keys of pretrained weights that no stage may change: engine/pretrained.py's BERT,
# and a Qwen3 decoder kept frozen (engine/qwen3_text.py; an agent trained with LoRA).
FROZEN = "bert"
FROZEN_KEYS = (FROZEN, "pretrained")


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-6) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def masked_mean(x: jax.Array, mask: jax.Array, axis: int = 1) -> jax.Array:
  """Mean of x [B, T, E] over the positions where mask [B, T] is set."""
  mask = mask.astype(x.dtype)[..., None]
  return (x * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


class Block(nn.Module):
  """Pre-norm transformer block."""
  heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x, mask):
    attn_mask = nn.make_attention_mask(mask, mask)
    y = nn.LayerNorm(name="ln_attn")(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, name="attn")(
        y, y, mask=attn_mask)
    y = nn.LayerNorm(name="ln_mlp")(x)
    y = nn.Dense(self.mlp_dim, name="mlp_in")(y)
    return x + nn.Dense(x.shape[-1], name="mlp_out")(nn.gelu(y))


class TextTower(nn.Module):
  """Word tokens (+ optional soft tokens) -> one L2-normalised query vector."""
  vocab_size: int
  max_len: int
  width: int
  depth: int
  heads: int
  mlp_dim: int
  num_slots: int
  embed_dim: int

  def setup(self):
    self.token_embed = nn.Embed(self.vocab_size, self.width,
                                embedding_init=nn.initializers.normal(0.02))
    init = nn.initializers.normal(0.02)
    self.pos_embed = self.param("pos_embed", init, (self.max_len, self.width))
    self.slots = self.param("slots", init, (self.num_slots, self.width))
    self.blocks = [Block(self.heads, self.mlp_dim, name=f"block{i}") for i in range(self.depth)]
    self.ln_out = nn.LayerNorm()
    self.proj = nn.Dense(self.embed_dim)

  def word_vectors(self, tokens: jax.Array) -> jax.Array:
    """Token embeddings without positions: what a discrete word adds onto a slot (HQR)."""
    return self.token_embed(tokens)

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    """[B, L] ids -> [B, L, width] input embeddings (what soft tokens are appended to)."""
    return self.token_embed(tokens) + self.pos_embed[:tokens.shape[1]]

  def __call__(self, tokens: jax.Array, soft: jax.Array | None = None) -> jax.Array:
    """tokens [B, L] int (0 = padding); soft [B, N, width] with N <= num_slots, or None."""
    B, L = tokens.shape
    if L > self.max_len:
      raise ValueError(f"query of {L} tokens; the text tower takes at most {self.max_len}")
    slots = jnp.broadcast_to(self.slots, (B, self.num_slots, self.width))
    if soft is not None:
      n = soft.shape[1]
      if n > self.num_slots:
        raise ValueError(f"{n} soft tokens, but the engine's text tower has only "
                         f"{self.num_slots} slots (engine.text.num_slots)")
      slots = slots.at[:, :n].add(soft.astype(slots.dtype))
    x = jnp.concatenate([self.embed_tokens(tokens), slots], axis=1)
    mask = jnp.concatenate([tokens != PAD, jnp.ones((B, self.num_slots), bool)], axis=1)
    for block in self.blocks:
      x = block(x, mask)
    # Pool the word positions only: the slots reach the output through attention, and a
    # constant template does not swamp the mean.
    words = mask.at[:, L:].set(False)
    return l2_normalize(self.proj(masked_mean(self.ln_out(x), words)))


class VideoTower(nn.Module):
  """Frame features [B, T, D] -> one L2-normalised vector per video (and per-frame vectors)."""
  hidden: int
  depth: int
  embed_dim: int

  def setup(self):
    self.ln_in = nn.LayerNorm()
    self.inp = nn.Dense(self.hidden)
    self.mlps = [(nn.LayerNorm(), nn.Dense(self.hidden)) for _ in range(self.depth)]
    self.proj = nn.Dense(self.embed_dim)

  def frames(self, features: jax.Array) -> jax.Array:
    """[B, T, D] -> [B, T, embed_dim] un-normalised frame vectors (pooled into the video's)."""
    x = self.inp(self.ln_in(features))
    for ln, dense in self.mlps:
      x = x + dense(nn.gelu(ln(x)))
    return self.proj(x)

  def __call__(self, features: jax.Array, num_frames: jax.Array) -> jax.Array:
    mask = jnp.arange(features.shape[1])[None, :] < num_frames[:, None]
    # The projection is linear, so pooling projected frames equals projecting the pooled ones.
    return l2_normalize(masked_mean(self.frames(features), mask))


class DualEncoder(nn.Module):
  """Both towers under one parameter tree: {'text': ..., 'video': ...}."""
  text: TextTower
  video: VideoTower

  def __call__(self, tokens, features, num_frames):
    return self.text(tokens), self.video(features, num_frames)

  def encode_text(self, tokens, soft=None):
    return self.text(tokens, soft)

  def word_vectors(self, tokens):
    return self.text.word_vectors(tokens)

  def text_pooled(self, tokens):
    """A frozen pretrained tower's pooled output (query_cache.frozen_text)."""
    return self.text.pooled(tokens)

  def text_from_pooled(self, pooled):
    return self.text.project(pooled)

  def encode_video(self, features, num_frames):
    return self.video(features, num_frames)

  def frame_vectors(self, features):
    return self.video.frames(features)


@dataclasses.dataclass(frozen=True)
class TextTowerKind:
  """A registered text tower (config.engine.text.kind).

  build(config, vocab_size) -> a module with TextTower's contract (__call__(tokens, soft),
  word_vectors, embed_tokens); tokenizer(config) -> the tokenizer it brings, or None when the
  data's own word vocabulary serves (called before any data is read).
  """
  build: Callable
  tokenizer: Callable = lambda config: None


def _scratch(config, vocab_size: int):
  e = config.engine
  return TextTower(vocab_size=vocab_size, max_len=config.data.max_query_len,
                   width=e.text.width, depth=e.text.depth, heads=e.text.heads,
                   mlp_dim=e.text.mlp_dim, num_slots=e.text.num_slots, embed_dim=e.embed_dim)


registry.TEXT_TOWERS.register("scratch", TextTowerKind(_scratch))


def tokenizer_for(config):
  """The engine's own tokenizer (a pretrained text tower's), or None."""
  return registry.TEXT_TOWERS.get(config.engine.text.kind, "engine.text.kind").tokenizer(config)


def build_engine(config, vocab_size: int) -> DualEncoder:
  e = config.engine
  video = VideoTower(hidden=e.video.hidden, depth=e.video.depth, embed_dim=e.embed_dim)
  text = registry.TEXT_TOWERS.get(e.text.kind, "engine.text.kind").build(config, vocab_size)
  if text.vocab_size != vocab_size:
    raise config_lib.InputError(f"the {e.text.kind} text tower has {text.vocab_size} tokens, the "
                     f"tokenizer {vocab_size}: the data was not tokenised with its tokenizer")
  return DualEncoder(text=text, video=video)


def init_engine(engine: DualEncoder, config, rng: jax.Array):
  tokens = jnp.zeros((1, config.data.max_query_len), jnp.int32).at[:, 0].set(2)
  feats = jnp.zeros((1, config.data.max_frames, config.data.feature_dim), jnp.float32)
  if hasattr(engine.text, "load_pretrained"):   # a pretrained text tower: its real weights
    # Jitted: an eager init would run the encoder op by op (seconds).
    params = jax.jit(engine.init)(rng, tokens, feats, jnp.ones((1,), jnp.int32))["params"]
    return dict(params, text=engine.text.load_pretrained(params["text"]))
  return engine.init(rng, tokens, feats, jnp.ones((1,), jnp.int32))["params"]


def freeze(tx: optax.GradientTransformation, params) -> optax.GradientTransformation:
  """tx for the trainable leaves, zero updates for pretrained weights (under FROZEN_KEYS).

  Their gradients are already zero (stop_gradient in the module); this keeps weight decay
  from moving them too. Returns tx itself when nothing is frozen (the optimizer state of a
  from-scratch engine is unchanged).
  """
  labels = jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if any(getattr(k, "key", None) in FROZEN_KEYS for k in path)
      else "train", params)
  if "frozen" not in jax.tree.leaves(labels):
    return tx
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
