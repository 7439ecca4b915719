"""The frozen text path of a Qwen3 / Qwen3-VL embedding model as the engine's text tower
(engine.text.kind='qwen3'; the paper's engine is Qwen3-VL-Embedding-2B).

A query is the embedding model's chat template around the query's tokens,

    <|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\n  w1 .. wn  [soft x N]  TAIL

with TAIL the template's final tokens (engine.text.template, the part after '{query}'), run
through the decoder with causal attention; the query vector is the last token's hidden state
(after the final RMSNorm), L2-normalised: last-token pooling, as the embedding model computes
it. Soft Query Refinement inserts its N soft tokens as input embeddings between the query and
TAIL (METHOD.md §7: "before the last 6 chat-template tokens"), so they shift TAIL's positions
as in the reference; with no soft tokens the sequence is the plain template.

Token ids: the data pipeline pads with 0, which is a real token of Qwen's vocabulary ('!'),
so the pipeline's id of a Qwen token is its id + 1 (Qwen3Tokenizer); the tower subtracts it
back. Frozen-ness as engine/pretrained.py's BERT: weights behind stop_gradient under the params
key 'pretrained' (towers.FROZEN_KEYS), routed to zero updates by towers.freeze; stage 0 trains
only the projection to engine.embed_dim (identity-initialised when square).
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vsr_jax.config_lib import ConfigError
from vsr_jax.data.tokenizer import PAD
from vsr_jax import registry
from vsr_jax.engine import pretrained
from vsr_jax.engine.towers import TextTowerKind, l2_normalize
from vsr_jax.models import qwen3

QUERY = "{query}"
INSTRUCTION = "{instruction}"


class Qwen3Tokenizer(pretrained.WordPieceTokenizer):
  """A Qwen tokenizer.json with the pipeline's interface: ids shifted by one (0 = padding)."""

  def __init__(self, directory: str, vocab_size: int):   # pylint: disable=super-init-not-called
    import tokenizers
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
      raise qwen3.Qwen3Error(f"{directory}: missing tokenizer.json (the model's tokenizer; a "
                             "Qwen3 model directory holds config.json, the safetensors "
                             "weights and tokenizer.json)")
    try:
      self._tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:   # the library raises a bare Exception on a malformed file
      raise qwen3.Qwen3Error(f"{path}: unreadable tokenizer ({e})") from None
    self._tok.no_truncation()
    self._tok.no_padding()
    self.path = path
    # The embedding table may be larger than the tokenizer (Qwen pads it): the model's size.
    own = self._tok.get_vocab_size(with_added_tokens=True)
    if own > vocab_size:
      raise qwen3.Qwen3Error(f"{path} has {own} tokens but config.json says vocab_size "
                             f"{vocab_size}")
    self.vocab_size = vocab_size

  def __len__(self) -> int:
    return self.vocab_size + 1

  def _pieces(self, texts):
    return [([i + 1 for i in ids], words) for ids, words in super()._pieces(texts)]

  def raw_ids(self, text: str) -> tuple:
    """Qwen ids (unshifted) of a template fragment; special tokens are recognised."""
    return tuple(self._tok.encode(text, add_special_tokens=False).ids)


def split_template(template: str, instruction: str) -> tuple[str, str]:
  if template.count(QUERY) != 1:
    raise ConfigError(f"config.engine.text.template={template!r}: expected exactly one "
                      f"{QUERY} placeholder")
  head, tail = template.split(QUERY)
  if not tail:
    raise ConfigError("config.engine.text.template ends with {query}: last-token pooling "
                      "needs the template's final tokens after the query")
  return head.replace(INSTRUCTION, instruction), tail.replace(INSTRUCTION, instruction)


class Qwen3TextTower(nn.Module):
  """Query tokens (+ optional soft tokens) -> one L2-normalised query vector."""
  arch: qwen3.Qwen3Config
  model_dir: str
  max_len: int            # query tokens (data.max_query_len)
  num_slots: int          # the most soft tokens a query takes (engine.text.num_slots)
  embed_dim: int
  head_ids: tuple         # the template before the query (Qwen ids)
  tail_ids: tuple         # the template's final tokens; soft tokens go before them
  dtype: str = "float32"

  @property
  def vocab_size(self) -> int:
    return self.arch.vocab_size + 1

  @property
  def width(self) -> int:
    return self.arch.hidden

  def template_key(self) -> tuple:
    return (list(self.head_ids), list(self.tail_ids), self.dtype)

  def setup(self):
    self.pretrained = qwen3.Qwen3(self.arch, frozen=True, dtype=self.dtype)
    self.proj = nn.Dense(self.embed_dim, kernel_init=pretrained._identity_or_default(
        self.embed_dim, self.arch.hidden))

  def word_vectors(self, tokens: jax.Array) -> jax.Array:
    """Token embeddings (zero for padding): what a discrete word adds (HQR)."""
    v = self.pretrained.embed(jnp.maximum(tokens - 1, 0)).astype(jnp.float32)
    return jnp.where((tokens != PAD)[..., None], v, 0.0)

  def _encode(self, tokens, soft):
    B, L = tokens.shape
    if L > self.max_len:
      raise ValueError(f"query of {L} tokens; the text tower takes at most {self.max_len}")
    N = 0 if soft is None else soft.shape[1]
    if N > self.num_slots:
      raise ValueError(f"{N} soft tokens, but the engine's text tower takes at most "
                       f"{self.num_slots} (engine.text.num_slots)")
    head, tail = np.asarray(self.head_ids, np.int32), np.asarray(self.tail_ids, np.int32)
    H, K = len(head), len(tail)
    # Pack the query's tokens left (a caption with dropped tokens may have holes).
    tokens = jnp.take_along_axis(tokens, jnp.argsort(tokens == PAD, axis=1, stable=True), 1)
    n = (tokens != PAD).sum(1)[:, None]
    T = H + L + N + K
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    in_query = (pos >= H) & (pos < H + n)
    in_soft = (pos >= H + n) & (pos < H + n + N)
    query = jnp.take_along_axis(tokens, jnp.clip(pos - H, 0, L - 1), 1) - 1
    ids = jnp.where(pos < H, jnp.asarray(head)[jnp.clip(pos, 0, H - 1)] if H else 0,
                    jnp.where(in_query, query, jnp.asarray(tail)[jnp.clip(pos - H - n - N, 0,
                                                                           K - 1)]))
    x = self.pretrained.embed(ids)
    if N:
      at = jnp.take_along_axis(soft, jnp.clip(pos - H - n, 0, N - 1)[..., None], 1)
      x = jnp.where(in_soft[..., None], at.astype(x.dtype), x)
    # Causal attention: the padding after the last token is never read by a real token.
    hidden, _ = self.pretrained(x, pos, qwen3.causal_mask(B, T))
    last = (H + n + N + K - 1)[:, 0]
    return hidden[jnp.arange(B), last].astype(jnp.float32)

  def pooled(self, tokens: jax.Array) -> jax.Array:
    """The frozen model's last-token state [B, hidden] without soft tokens (query_cache)."""
    return self._encode(tokens, None)

  def project(self, pooled: jax.Array) -> jax.Array:
    return l2_normalize(self.proj(pooled))

  def sentence_embedding(self, tokens: jax.Array, soft: jax.Array | None = None) -> jax.Array:
    """The embedding model's own L2-normalised query vector [B, hidden] (no projection)."""
    return l2_normalize(self._encode(tokens, soft))

  def __call__(self, tokens: jax.Array, soft: jax.Array | None = None) -> jax.Array:
    """tokens [B, L] pipeline ids (0 = padding); soft [B, N, hidden], N <= num_slots."""
    return self.project(self._encode(tokens, soft))

  def load_pretrained(self, text_params: dict) -> dict:
    """text_params with the checkpoint's weights in place of the placeholders."""
    weights = qwen3.load_weights(self.model_dir, self.arch, np.dtype(jnp.dtype(self.dtype)))
    return dict(text_params, pretrained={k: jnp.asarray(v) for k, v in weights.items()})


def model_dir(config) -> str:
  return qwen3.local_dir(config.engine.text.pretrained_dir, "engine.text.pretrained_dir",
                         "config.json, the safetensors weights and tokenizer.json "
                         "(engine.text.kind='qwen3')")


def tokenizer_for(config) -> Qwen3Tokenizer:
  """Checked before any data is read: the config, the weights' shapes (file headers only), the
  tokenizer, the template."""
  directory = model_dir(config)
  arch = qwen3.Qwen3Config.load(directory)
  qwen3.check_weights(directory, arch)
  if config.engine.text.width != arch.hidden:
    raise ConfigError(
        f"config.engine.text.width={config.engine.text.width}: expected {arch.hidden}, the "
        f"hidden size of the model in {directory} (soft tokens live there)")
  tok = Qwen3Tokenizer(directory, arch.vocab_size)
  split_template(config.engine.text.template, config.engine.text.instruction)
  qwen3.dtype_of(config.engine.text.dtype)
  return tok


def build_tower(config, vocab_size: int) -> Qwen3TextTower:
  del vocab_size
  directory = model_dir(config)
  arch = qwen3.Qwen3Config.load(directory)
  tok = Qwen3Tokenizer(directory, arch.vocab_size)
  head, tail = split_template(config.engine.text.template, config.engine.text.instruction)
  return Qwen3TextTower(arch=arch, model_dir=directory, max_len=config.data.max_query_len,
                        num_slots=config.engine.text.num_slots,
                        embed_dim=config.engine.embed_dim, head_ids=tok.raw_ids(head),
                        tail_ids=tok.raw_ids(tail), dtype=config.engine.text.dtype)


registry.TEXT_TOWERS.register("qwen3", TextTowerKind(build=build_tower, tokenizer=tokenizer_for))
